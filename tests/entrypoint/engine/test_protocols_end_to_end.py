"""The whole engine over each non-OIP protocol, against loopback servers speaking it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from tests.entrypoint.engine.conftest import engine_config
from warmgate.state import Report

Prove = Callable[..., Awaitable[Report]]
ServeApp = Callable[[web.Application], Awaitable[str]]
LOAD = {"duration_s": 0.3, "concurrency": 2}


def tfserving_app() -> web.Application:
    async def status(_request: web.Request) -> web.Response:
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    async def predict(request: web.Request) -> web.Response:
        document = await request.json()
        instances = document.get("instances")
        if not isinstance(instances, list):
            return web.json_response({"error": "JSON Value: missing instances"}, status=400)
        await asyncio.sleep(0.001)
        return web.json_response({"predictions": [[sum(row) * 0.5] for row in instances]})

    app = web.Application()
    app.router.add_get("/v1/models/m", status)
    app.router.add_post("/v1/models/m:predict", predict)
    return app


def torchserve_app() -> web.Application:
    async def ping(_request: web.Request) -> web.Response:
        return web.json_response({"status": "Healthy"})

    async def predict(request: web.Request) -> web.Response:
        text = await request.text()
        await asyncio.sleep(0.001)
        return web.json_response(
            {"label": "positive" if len(text) % 2 else "negative", "words": len(text.split())}
        )

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/predictions/m", predict)
    return app


async def test_tfserving(serve_app: ServeApp, prove: Prove, tmp_path: Path) -> None:
    url = await serve_app(tfserving_app())
    shapes = [
        {"name": "rows", "batch_size": 2, "inputs": {"x": {"datatype": "FP32", "dims": [3]}}, "count": 3}
    ]
    config = engine_config(
        url, tmp_path, server={"protocol": "tfserving", "model": "m"}, shapes=shapes, load_test=LOAD
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    [rows] = report.shapes
    assert rows.concurrency_check is not None and rows.concurrency_check.checked > 0
    assert rows.concurrency_check.mismatches == 0


async def test_torchserve_text(serve_app: ServeApp, prove: Prove, tmp_path: Path) -> None:
    url = await serve_app(torchserve_app())
    text = {"datatype": "BYTES", "dims": [1], "data": "text", "length": 12}
    shapes = [{"name": "sentence", "batch_size": 0, "inputs": {"text": text}, "count": 3}]
    config = engine_config(
        url, tmp_path, server={"protocol": "torchserve", "model": "m"}, shapes=shapes, load_test=LOAD
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    [sentence] = report.shapes
    check = sentence.concurrency_check
    assert check is not None and check.checked > 0 and check.mismatches == 0


async def test_tfserving_error_answer_names_the_shape(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    url = await serve_app(tfserving_app())
    # batch_size 0 is sent in column form, which this server refuses.
    shapes = [{"name": "columns", "batch_size": 0, "inputs": {"x": {"dims": [3]}}, "count": 2}]
    config = engine_config(url, tmp_path, server={"protocol": "tfserving", "model": "m"}, shapes=shapes)
    report = await prove(config)
    body = '{"error": "JSON Value: missing instances"}'
    assert report.gate.reason == f"shape columns: HTTP 400 from POST {url}/v1/models/m:predict: {body}"
