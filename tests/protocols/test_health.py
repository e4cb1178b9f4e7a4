"""The protocol-agnostic health part: asking HTTP endpoints and the wait loop, against real
loopback servers (aiohttp test servers on port 0). Each protocol's own endpoints are tested with it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.protocols.support import ServerFactory, app_with
from warmgate.protocols.health import (
    Endpoint,
    HealthCheck,
    ServerNeverHealthy,
    check_endpoints,
    wait_until_healthy,
)


def asking(session: aiohttp.ClientSession, *urls: str) -> HealthCheck:
    """A health check of these HTTP endpoints, as an HTTP protocol's check_ready makes one."""
    endpoints = [Endpoint(url) for url in urls]

    async def check(timeout_s: float) -> str | None:
        return await check_endpoints(session, endpoints, timeout_s)

    return check


async def test_becomes_ready_after_a_delay(aiohttp_server: ServerFactory) -> None:
    answers = iter([503, 400, 500])

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=next(answers, 200), text="loading")

    server = await aiohttp_server(app_with({"/ready": ready}))
    async with aiohttp.ClientSession() as session:
        polls = await wait_until_healthy(asking(session, str(server.make_url("/ready"))), 10)
    assert polls == 4  # 503, 400 and 500 all mean "not yet"


async def test_never_ready_reports_status_and_body(aiohttp_server: ServerFactory) -> None:
    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=503, text='{"error": "model still loading"}')

    server = await aiohttp_server(app_with({"/ready": ready}))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ServerNeverHealthy) as caught:
            await wait_until_healthy(asking(session, str(server.make_url("/ready"))), 0.3)
    assert "HTTP 503" in caught.value.last_error
    assert "model still loading" in caught.value.last_error


async def test_endpoints_are_asked_together_and_the_first_failure_in_order_is_the_reason(
    aiohttp_server: ServerFactory,
) -> None:
    release = asyncio.Event()
    asked: list[str] = []

    async def slow_but_fine(request: web.Request) -> web.Response:
        asked.append(request.path)
        await release.wait()  # answers only once the second endpoint has been asked
        return web.Response()

    async def failing(request: web.Request) -> web.Response:
        asked.append(request.path)
        release.set()
        return web.Response(status=503, text="loading")

    server = await aiohttp_server(app_with({"/a": slow_but_fine, "/b": failing}))
    endpoints = [Endpoint(str(server.make_url("/a"))), Endpoint(str(server.make_url("/b")))]
    async with aiohttp.ClientSession() as session:
        reason = await check_endpoints(session, endpoints, 5)
    assert sorted(asked) == ["/a", "/b"]
    assert reason is not None and reason.endswith("/b: HTTP 503 loading")


async def test_connection_refused_is_tolerated_until_the_server_listens(unused_tcp_port: int) -> None:
    port = unused_tcp_port
    reasons: list[str | None] = []
    runner: web.AppRunner | None = None

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    def on_poll(polls: int, reason: str | None) -> None:
        reasons.append(reason)
        if polls == 2:
            asyncio.get_running_loop().create_task(start())

    async def start() -> None:
        nonlocal runner
        runner = web.AppRunner(app_with({"/health": healthy}))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    try:
        async with aiohttp.ClientSession() as session:
            await wait_until_healthy(asking(session, f"http://127.0.0.1:{port}/health"), 10, on_poll=on_poll)
    finally:
        if runner is not None:
            await runner.cleanup()
    assert reasons[0] is not None and "cannot connect" in reasons[0]
    assert reasons[-1] is None


async def test_a_hanging_server_costs_one_poll_timeout_not_the_whole_budget(
    aiohttp_server: ServerFactory,
) -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    server = await aiohttp_server(app_with({"/ready": hang}))
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ServerNeverHealthy) as caught:
                await wait_until_healthy(asking(session, str(server.make_url("/ready"))), 0.2)
    finally:
        release.set()
    assert "no answer within" in caught.value.last_error


async def test_polls_stay_frequent_early_and_back_off_for_long_loads() -> None:
    """Each interval is start-up latency added to the pod: short while a fast server may come up,
    up to a second once the load is clearly long. Driven by a fake clock, not by waiting."""
    now = [0.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async with aiohttp.ClientSession() as session:
        never = asking(session, "http://127.0.0.1:9/never")  # discard port: refused at once
        with pytest.raises(ServerNeverHealthy):
            await wait_until_healthy(never, 30, clock=lambda: now[0], sleep=fake_sleep)
    early = [w for w, t in zip(waits, _elapsed(waits), strict=True) if t < 10]
    late = [w for w, t in zip(waits, _elapsed(waits), strict=True) if t > 12]
    assert waits[0] <= 0.05
    assert max(early) <= 0.1
    assert max(late) == 1.0


def _elapsed(waits: list[float]) -> list[float]:
    total, out = 0.0, []
    for wait in waits:
        out.append(total)
        total += wait
    return out
