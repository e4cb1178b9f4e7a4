"""A shape the server did not run never passes: the whole engine against loopback servers that
answer batch 1 to a batch-8 request, over the generic HTTP template and the tensor protocols.

The custom server is the one of issue 13: `POST /infer?batch=N` with a JSON body. Before the
template took placeholders outside whole body strings, the batch size could not reach its query,
the server ran batch 1 for every shape, and the gate passed because `output_fields` only checks
that a field exists; the tests below fail on that version.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.entrypoint.engine.conftest import ServerFactory, engine_config
from warmgate.state import Report

pytestmark = pytest.mark.timeout(60)

Prove = Callable[..., Awaitable[Report]]
ServeApp = Callable[[web.Application], Awaitable[str]]
LOAD = {"duration_s": 0.3, "concurrency": 2}
SHAPES = [
    {"name": "bs1", "batch_size": 1, "inputs": {"x": {"datatype": "FP32", "dims": [3]}}, "count": 2},
    {"name": "bs8", "batch_size": 8, "inputs": {"x": {"datatype": "FP32", "dims": [3]}}, "count": 2},
]
# What the user of issue 13 writes for their server, with the batch size where the API takes it.
TEMPLATE = {
    "path": "/infer?batch={{batch_size}}",
    "headers": {"X-Batch": "{{batch_size}}"},
    "body": {"rows": "{{input:x}}", "note": "batch of {{batch_size}}"},
    "output_fields": ["predictions"],
    "expect": [
        {"field": "batch", "equals": "{{batch_size}}"},
        {"field": "predictions", "length": "{{batch_size}}"},
    ],
}


@dataclass
class CustomServer:
    """`POST /infer?batch=N`: runs N rows (1 when the query has no batch), or always 1 when it
    ignores the query (the bug a gate must catch); records what each request carried."""

    reads_batch: bool = True
    seen: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def health(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def infer(request: web.Request) -> web.Response:
            document = await request.json()
            self.seen.append(
                {
                    "query": dict(request.query),
                    "header": request.headers.get("X-Batch"),
                    "note": document["note"],
                }
            )
            batch = int(request.query.get("batch", "1")) if self.reads_batch else 1
            rows = document["rows"][:batch]
            return web.json_response({"batch": batch, "predictions": [[sum(row)] for row in rows]})

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/infer", infer)
        return app


def custom_config(url: str, tmp_path: Path, **template: Any) -> Any:
    server = {"protocol": "http", "health_path": "/health", "http": {**TEMPLATE, **template}}
    return engine_config(url, tmp_path, server=server, shapes=SHAPES, load_test=LOAD)


async def test_the_batch_size_reaches_the_query_headers_and_body_and_the_gate_passes(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    server = CustomServer()
    url = await serve_app(server.app())
    report = await prove(custom_config(url, tmp_path))
    assert report.gate.passed, report.gate.reason
    sent = {(each["query"]["batch"], each["header"], each["note"]) for each in server.seen}
    assert sent == {("1", "1", "batch of 1"), ("8", "8", "batch of 8")}
    _bs1, bs8 = report.shapes
    assert bs8.concurrency_check is not None and bs8.concurrency_check.checked > 0
    assert bs8.concurrency_check.mismatches == 0


async def test_a_server_that_ignores_the_batch_fails_the_batch_8_shape_in_warmup(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    server = CustomServer(reads_batch=False)
    url = await serve_app(server.app())
    report = await prove(custom_config(url, tmp_path))
    assert not report.gate.passed
    assert report.gate.reason is not None
    prefix = "shape bs8: answer field batch is 1, expected 8 (server.http.expect[0]): "
    assert report.gate.reason.startswith(prefix)
    assert report.gate.reason[len(prefix) :].startswith('{"batch": 1, "predictions": [[')  # the answer
    assert "\n" not in report.gate.reason
    [failed] = [check for check in report.gate.checks if not check.passed]
    assert failed.name == "warmup[bs8]"
    assert report.load_test is None  # no load test once a shape failed its warmup
    # It was sent batch 8: the template did its part, the server did not.
    assert {"batch": "8"} in [each["query"] for each in server.seen]


async def test_the_issue_13_config_without_the_batch_in_the_query_fails_instead_of_passing(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    # The path the user had to write before: the server runs its default batch of 1.
    server = CustomServer()
    url = await serve_app(server.app())
    expect = [{"field": "predictions", "length": "{{batch_size}}"}]
    report = await prove(custom_config(url, tmp_path, path="/infer", expect=expect))
    assert not report.gate.passed
    assert report.gate.reason is not None
    assert report.gate.reason.startswith(
        "shape bs8: answer field predictions has 1 item, expected 8 (server.http.expect[0]): "
    )


# ---- the tensor protocols: an output for another batch -------------------------------------------


async def test_an_oip_server_answering_batch_1_to_batch_8_fails_that_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    batch_1 = {
        "model_name": "demo",
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3}],
    }
    url, _ = await oip_server(fail={8: (200, json.dumps(batch_1))})
    report = await prove(engine_config(url, tmp_path, shapes=SHAPES, load_test=LOAD))
    assert not report.gate.passed
    assert report.gate.reason is not None
    assert report.gate.reason.startswith(
        "shape bs8: output output0: shape [1, 3] does not lead with the batch size 8: "
        "the server did not answer the shape that was sent: "
    )
    assert [check.name for check in report.gate.checks if not check.passed] == ["warmup[bs8]"]


def tfserving_app(batch: int | None) -> web.Application:
    """TF Serving's predict: one prediction per instance, or `batch` of them whatever was sent."""

    async def status(_request: web.Request) -> web.Response:
        return web.json_response({"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})

    async def predict(request: web.Request) -> web.Response:
        instances = (await request.json())["instances"]
        rows = instances if batch is None else instances[:batch]
        return web.json_response({"predictions": [[sum(row)] for row in rows]})

    app = web.Application()
    app.router.add_get("/v1/models/m", status)
    app.router.add_post("/v1/models/m:predict", predict)
    return app


@pytest.mark.parametrize("batch", [None, 1], ids=["answers-every-instance", "answers-batch-1"])
async def test_a_tfserving_server_answering_batch_1_to_batch_8_fails_that_shape(
    serve_app: ServeApp, prove: Prove, tmp_path: Path, batch: int | None
) -> None:
    url = await serve_app(tfserving_app(batch))
    server = {"protocol": "tfserving", "model": "m"}
    report = await prove(engine_config(url, tmp_path, server=server, shapes=SHAPES, load_test=LOAD))
    if batch is None:  # the control: the same server answering properly passes
        assert report.gate.passed, report.gate.reason
        return
    assert not report.gate.passed
    assert report.gate.reason is not None
    assert report.gate.reason.startswith(
        "shape bs8: output predictions: shape [1, 1] does not lead with the batch size 8: "
        'the server did not answer the shape that was sent: {"predictions": [['
    )
    assert [check.name for check in report.gate.checks if not check.passed] == ["warmup[bs8]"]
