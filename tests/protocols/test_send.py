"""Sending one request over a real loopback connection, and how each failure is classified."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from warmgate.config import ServerConfig
from warmgate.protocols import Adapter, PreparedRequest, Result, make_adapter, send, validate

TIMEOUT = aiohttp.ClientTimeout(total=2)
Send = Callable[[aiohttp.ClientSession, PreparedRequest, aiohttp.ClientTimeout], Awaitable[Result]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture(params=["aiohttp", "lean"])
async def send_one(request: pytest.FixtureRequest) -> AsyncIterator[Send]:
    """Both transports classify alike: the aiohttp session (https, health checks, metadata) and the
    lean HTTP/1.1 connections an adapter sends plain http:// requests over (_http1.py)."""
    if request.param == "aiohttp":
        yield send
        return
    adapter: Adapter = make_adapter(ServerConfig())
    yield adapter.send
    await adapter.aclose()


@pytest.fixture
async def base_url(aiohttp_server: Any) -> str:
    async def ok(request: web.Request) -> web.Response:
        assert await request.read() == b'{"x":1}'
        return web.json_response({"outputs": [{"name": "y", "data": [1]}]})

    async def error(_request: web.Request) -> web.Response:
        return web.Response(
            status=400, text="input 'x' has wrong shape [1, 3], expected [1, 4]\n" + "z" * 300
        )

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async def empty(_request: web.Request) -> web.Response:
        return web.json_response({"outputs": []})

    app = web.Application()
    for path, handler in (
        ("/ok", ok),
        ("/error", error),
        ("/hang", hang),
        ("/reset", reset),
        ("/empty", empty),
    ):
        app.router.add_post(path, handler)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def post(url: str) -> PreparedRequest:
    return PreparedRequest("POST", url, b'{"x":1}')


async def test_success_is_timed_and_keeps_the_body(
    session: aiohttp.ClientSession, base_url: str, send_one: Send
) -> None:
    result = await send_one(session, post(base_url + "/ok"), TIMEOUT)
    assert result.ok and result.status == 200
    assert result.latency_s > 0
    checked, outputs = validate(make_adapter(ServerConfig()), result)
    assert checked.ok and outputs is not None and outputs["y"].data == [1]


async def test_http_error_names_status_url_and_start_of_body(
    session: aiohttp.ClientSession, base_url: str, send_one: Send
) -> None:
    result = await send_one(session, post(base_url + "/error"), TIMEOUT)
    assert result.kind == "http_400"
    assert result.message.startswith(f"HTTP 400 from POST {base_url}/error: input 'x' has wrong shape [1, 3]")
    assert result.message.endswith("...") and len(result.message) < 250
    assert "\n" not in result.message


async def test_hang_is_a_named_timeout(session: aiohttp.ClientSession, base_url: str, send_one: Send) -> None:
    result = await send_one(session, post(base_url + "/hang"), aiohttp.ClientTimeout(total=0.1))
    assert result.kind == "timeout"
    assert result.message == f"no response within 0.1s (server.request_timeout_s) from POST {base_url}/hang"


async def test_reset_is_a_connection_failure(
    session: aiohttp.ClientSession, base_url: str, send_one: Send
) -> None:
    result = await send_one(session, post(base_url + "/reset"), TIMEOUT)
    assert result.kind == "connection"
    assert result.message.startswith(f"POST {base_url}/reset: ")


async def test_refused_connection(session: aiohttp.ClientSession, send_one: Send) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    result = await send_one(session, post(f"http://127.0.0.1:{port}/x"), TIMEOUT)
    assert result.kind == "connection"
    assert "cannot connect" in result.message


async def test_answer_without_outputs_fails_validation(
    session: aiohttp.ClientSession, base_url: str, send_one: Send
) -> None:
    result, outputs = validate(
        make_adapter(ServerConfig()), await send_one(session, post(base_url + "/empty"), TIMEOUT)
    )
    assert outputs is None
    assert result.kind == "invalid_response"
    assert result.message == 'response has no outputs: {"outputs": []}'
