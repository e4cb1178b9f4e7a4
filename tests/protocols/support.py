"""Helpers shared by the protocol tests: a server section and a shape, validated like warmup.yaml."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from warmgate.config import ServerConfig, Shape
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import PreparedRequest, make_adapter


def server(protocol: str = "oip", **extra: Any) -> ServerConfig:
    return ServerConfig.model_validate(
        {"url": "http://127.0.0.1:9", "protocol": protocol, "model": "m", **extra}
    )


def shape(batch: int = 2, **inputs: dict[str, Any]) -> Shape:
    inputs = inputs or {"x": {"datatype": "FP32", "dims": [2], "data": "literal", "value": [1.5, 2.5]}}
    return Shape.model_validate({"name": "s", "batch_size": batch, "inputs": inputs})


def body(protocol: str, the_shape: Shape, **extra: Any) -> tuple[PreparedRequest, Any]:
    """The request the protocol builds for this shape, and its body (parsed when JSON)."""
    adapter = make_adapter(server(protocol, **extra))
    request = adapter.build(build_inputs(the_shape), the_shape.batch_size)
    assert request.body is not None
    if request.headers["Content-Type"] == "application/json":
        return request, json.loads(request.body)
    return request, request.body


ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def app_with(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app
