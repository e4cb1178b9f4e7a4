"""Open Inference Protocol v2 REST: requests, answers, model metadata and health."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.protocols.support import ServerFactory, app_with, body, server, shape
from warmgate.config import AutoShapes, ServerConfig
from warmgate.protocols import InvalidResponse, MetadataError, make_adapter
from warmgate.protocols.health import wait_until_healthy
from warmgate.protocols.oip import shapes_from_metadata


def test_oip_request_has_batch_in_shape_and_flat_data() -> None:
    request, document = body(
        "oip",
        shape(
            x={"datatype": "FP16", "dims": [2], "data": "literal", "value": [0.5, 0.25]},
            t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hi"},
            b={"datatype": "BOOL", "dims": [1], "data": "literal", "value": True},
        ),
    )
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/v2/models/m/infer"
    assert document == {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP16", "data": [0.5, 0.25, 0.5, 0.25]},
            {"name": "t", "shape": [2, 1], "datatype": "BYTES", "data": ["hi", "hi"]},
            {"name": "b", "shape": [2, 1], "datatype": "BOOL", "data": [True, True]},
        ]
    }


def test_oip_versioned_url_and_unbatched_shape() -> None:
    request, document = body("oip", shape(batch=0), model_version="3")
    assert request.url.endswith("/v2/models/m/versions/3/infer")
    assert document["inputs"][0]["shape"] == [2]


def test_oip_parse_reads_outputs_flat_or_nested() -> None:
    adapter = make_adapter(server())
    outputs = adapter.parse(
        b'{"outputs": [{"name": "y", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}'
    )
    assert outputs["y"].data == [1, 2, 3, 4]
    assert outputs["y"].shape == (2, 2)
    assert outputs["y"].datatype == "INT64"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b'{"model_name": "m", "outputs": []}', "response has no outputs"),
        (b'{"model_name": "m"}', "response has no outputs"),
        (b'{"error": "bad input"}', "response carries an error: bad input"),
        (b"<html>oops</html>", "response is not JSON"),
        (b'{"outputs": [{"name": "y"}]}', "output 0 has no data"),
    ],
)
def test_oip_parse_rejects_answers_without_outputs(answer: bytes, message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        make_adapter(server()).parse(answer)


def test_metadata_with_batch_dimension_gives_one_shape_per_batch_size() -> None:
    metadata = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]}
    shapes = shapes_from_metadata(metadata, AutoShapes(batch_sizes=[1, 8], dynamic_dim=16), "u")
    assert [(s.name, s.batch_size) for s in shapes] == [("auto-bs1", 1), ("auto-bs8", 8)]
    assert shapes[0].inputs["ids"].dims == [16]
    assert shapes[0].inputs["ids"].datatype == "INT64"


def test_metadata_without_batch_dimension_gives_one_unbatched_shape() -> None:
    metadata = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4]}]}
    [only] = shapes_from_metadata(metadata, AutoShapes(), "u")
    assert only.batch_size == 0
    assert only.inputs["x"].dims == [3, 4]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "m", "inputs": []}, "model metadata lists no inputs; list shapes in warmup.yaml instead"),
        ({"name": "m"}, "lists no inputs"),
        ({"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1]}]}, "unsupported datatype COMPLEX"),
        ({"inputs": [{"datatype": "FP32"}]}, "has no name or shape"),
    ],
)
def test_bad_metadata_is_a_clear_error(metadata: Any, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        shapes_from_metadata(metadata, AutoShapes(), "GET u")


# ---- health --------------------------------------------------------------------------------------


async def test_ready_needs_both_server_and_model_ready(aiohttp_server: ServerFactory) -> None:
    model_ready = asyncio.Event()

    async def server_ready(_: web.Request) -> web.Response:
        return web.Response(status=200)  # KServe: always true

    async def model(_: web.Request) -> web.Response:
        return web.Response(status=200 if model_ready.is_set() else 400, text="model not ready")

    test_server = await aiohttp_server(
        app_with({"/v2/health/ready": server_ready, "/v2/models/resnet/ready": model})
    )
    adapter = make_adapter(ServerConfig(url=str(test_server.make_url("")).rstrip("/"), model="resnet"))

    def on_poll(polls: int, reason: str | None) -> None:
        if polls == 3:
            assert reason is not None and "/v2/models/resnet/ready: HTTP 400" in reason
            model_ready.set()

    async with aiohttp.ClientSession() as session:
        polls = await wait_until_healthy(functools.partial(adapter.check_ready, session), 10, on_poll=on_poll)
    assert polls == 4


def test_health_endpoints_and_their_overrides() -> None:
    adapter = make_adapter(server(model_version="2"))
    assert [e.url for e in adapter.readiness_endpoints()] == [
        "http://127.0.0.1:9/v2/health/ready",
        "http://127.0.0.1:9/v2/models/m/versions/2/ready",
    ]
    assert adapter.liveness_endpoint().url == "http://127.0.0.1:9/v2/health/live"
    assert adapter.health_url == "http://127.0.0.1:9/v2/health/ready"
    custom = make_adapter(server(health_path="/up", live_path="/alive"))
    assert [e.url for e in custom.readiness_endpoints()] == ["http://127.0.0.1:9/up"]
    assert custom.liveness_endpoint().url == "http://127.0.0.1:9/alive"


async def test_live_asks_only_the_live_endpoint(aiohttp_server: ServerFactory) -> None:
    async def live(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def not_ready(_: web.Request) -> web.Response:
        return web.Response(status=503)

    test_server = await aiohttp_server(app_with({"/v2/health/live": live, "/v2/health/ready": not_ready}))
    adapter = make_adapter(ServerConfig(url=str(test_server.make_url("")).rstrip("/")))
    async with aiohttp.ClientSession() as session:
        assert await adapter.check_live(session, 2) is None
        reason = await adapter.check_ready(session, 2)
    assert reason is not None and "/v2/health/ready: HTTP 503" in reason


async def test_auto_shapes_read_the_model_metadata(aiohttp_server: ServerFactory) -> None:
    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]})

    test_server = await aiohttp_server(app_with({"/v2/models/m": metadata}))
    adapter = make_adapter(ServerConfig(url=str(test_server.make_url("")).rstrip("/"), model="m"))
    assert adapter.supports_auto_shapes()
    async with aiohttp.ClientSession() as session:
        shapes = await adapter.discover_shapes(session, AutoShapes(batch_sizes=[2]), 2)
    assert [(s.name, s.batch_size, s.inputs["x"].dims) for s in shapes] == [("auto-bs2", 2, [3])]
