"""The run's HTTP clients hold every load-test request in flight at once: none waits inside a
client's connection pool, where its latency would be the client's queue, not the server's. Both
transports are held to it: the aiohttp session (https, health, metadata) and the adapter's lean
HTTP/1.1 connections that plain http:// timed requests go over."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.entrypoint.engine.conftest import engine_config
from warmgate.config import Config
from warmgate.entrypoint.engine.connections import MAX_IN_FLIGHT, client_session, connection_limit
from warmgate.entrypoint.engine.loadgen import LoadSamples, Target, closed_loop
from warmgate.protocols import PreparedRequest, Result, make_adapter, send

# Above aiohttp's default pool of 100 connections, which the client used to have.
CONCURRENCY = 150
# How long the server holds a request waiting for the others; the test fails well before.
HOLD_DEADLINE_S = 5.0


Send = Callable[[PreparedRequest, aiohttp.ClientTimeout], Awaitable[Result]]
TRANSPORTS = ("aiohttp", "lean")


@asynccontextmanager
async def sender(transport: str, config: Config) -> AsyncIterator[Send]:
    """A send over the run's session ("aiohttp") or over the adapter's own connections ("lean")."""
    async with client_session(config) as session:
        if transport == "aiohttp":
            yield functools.partial(send, session)
            return
        adapter = make_adapter(config.server)
        try:
            yield functools.partial(adapter.send, session)
        finally:
            await adapter.aclose()


class InFlight:
    """A server that holds each request until CONCURRENCY are in flight (or the deadline passes),
    and records the most it saw at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.all_arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self.now >= CONCURRENCY:
            self.all_arrived.set()
        try:
            await asyncio.wait_for(self.all_arrived.wait(), HOLD_DEADLINE_S)
        except asyncio.TimeoutError:
            pass
        finally:
            self.now -= 1
        return web.json_response({"outputs": []})


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_closed_loop_at_150_has_150_requests_in_flight(
    aiohttp_server: Any, tmp_path: Path, transport: str
) -> None:
    server = InFlight()
    app = web.Application()
    app.router.add_post("/infer", server.handle)
    # The listen backlog must not be what limits the connections either.
    test_server = await aiohttp_server(app, backlog=CONCURRENCY * 2)
    url = str(test_server.make_url("")).rstrip("/")
    config = engine_config(url, tmp_path, load_test={"concurrency": CONCURRENCY})
    request = PreparedRequest(method="POST", url=f"{url}/infer", body=b"{}")
    samples = LoadSamples()
    async with sender(transport, config) as send_one:
        await closed_loop(
            functools.partial(send_one, timeout=aiohttp.ClientTimeout(total=20)),
            [Target(request, 0)],
            [0],
            concurrency=CONCURRENCY,
            duration_s=60,
            max_requests=CONCURRENCY,
            samples=samples,
        )
    assert len(samples) == CONCURRENCY
    assert server.peak == CONCURRENCY, f"at most {server.peak} requests were in flight at once"


def test_pool_size_follows_the_load_test(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    # As many as the stage has in flight, plus two kept for the readiness watch.
    assert connection_limit(engine_config(url, tmp_path, load_test={"concurrency": 300})) == 302
    assert (
        connection_limit(engine_config(url, tmp_path, load_test={"mode": "open", "rate": 5}))
        == MAX_IN_FLIGHT + 2
    )
    assert connection_limit(engine_config(url, tmp_path, warmup={"concurrency": 200})) == 202
    # Never below aiohttp's own default, which health polls and warmup were tuned with.
    assert connection_limit(engine_config(url, tmp_path, load_test={"concurrency": 2})) == 100


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cookie_the_server_sets_is_never_sent_back(
    aiohttp_server: Any, tmp_path: Path, transport: str
) -> None:
    """Every request is the prepared one: a Set-Cookie from the server (a session, a sticky
    backend) must not change what the warmup and the load test send afterwards."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="{}")
        response.set_cookie("session", "abc")
        return response

    app = web.Application()
    app.router.add_post("/x", handle)
    server = await aiohttp_server(app)
    config = engine_config(str(server.make_url("")).rstrip("/"), tmp_path)
    # By name: aiohttp's default jar ignores cookies from IP addresses, so 127.0.0.1 proves nothing.
    request = PreparedRequest("POST", f"http://localhost:{server.port}/x", b"{}")
    async with sender(transport, config) as send_one:
        for _ in range(3):
            assert (await send_one(request, aiohttp.ClientTimeout(total=5))).ok
    assert seen == [None, None, None]
