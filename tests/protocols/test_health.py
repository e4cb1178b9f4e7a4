"""Waiting for health against real loopback servers (aiohttp test servers on port 0)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from warmgate.config import ServerConfig
from warmgate.protocols.health import (
    Endpoint,
    ServerNeverHealthy,
    readiness_endpoints,
    wait_until_healthy,
)

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def app_with(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> web.Application:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return app


async def test_becomes_ready_after_a_delay(aiohttp_server: ServerFactory) -> None:
    answers = iter([503, 400, 500])

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=next(answers, 200), text="loading")

    server = await aiohttp_server(app_with({"/ready": ready}))
    async with aiohttp.ClientSession() as session:
        polls = await wait_until_healthy(session, [Endpoint(str(server.make_url("/ready")))], 10)
    assert polls == 4  # 503, 400 and 500 all mean "not yet"


async def test_never_ready_reports_status_and_body(aiohttp_server: ServerFactory) -> None:
    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=503, text='{"error": "model still loading"}')

    server = await aiohttp_server(app_with({"/ready": ready}))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ServerNeverHealthy) as caught:
            await wait_until_healthy(session, [Endpoint(str(server.make_url("/ready")))], 0.3)
    assert "HTTP 503" in caught.value.last_error
    assert "model still loading" in caught.value.last_error


async def test_oip_needs_both_server_and_model_ready(aiohttp_server: ServerFactory) -> None:
    model_ready = asyncio.Event()

    async def server_ready(_: web.Request) -> web.Response:
        return web.Response(status=200)  # KServe: always true

    async def model(_: web.Request) -> web.Response:
        return web.Response(status=200 if model_ready.is_set() else 400, text="model not ready")

    server = await aiohttp_server(
        app_with({"/v2/health/ready": server_ready, "/v2/models/resnet/ready": model})
    )
    config = ServerConfig(url=str(server.make_url("")).rstrip("/"), model="resnet")
    endpoints = readiness_endpoints(config)

    def on_poll(polls: int, reason: str | None) -> None:
        if polls == 3:
            assert reason is not None and "/v2/models/resnet/ready: HTTP 400" in reason
            model_ready.set()

    async with aiohttp.ClientSession() as session:
        polls = await wait_until_healthy(session, endpoints, 10, on_poll=on_poll)
    assert polls == 4


async def test_tfserving_needs_an_available_version(aiohttp_server: ServerFactory) -> None:
    state = {"value": "LOADING"}

    async def status(_: web.Request) -> web.Response:
        body = {"model_version_status": [{"version": "1", "state": state["value"]}]}
        return web.json_response(body)

    server = await aiohttp_server(app_with({"/v1/models/half_plus_two": status}))
    config = ServerConfig(
        url=str(server.make_url("")).rstrip("/"), protocol="tfserving", model="half_plus_two"
    )

    def on_poll(polls: int, reason: str | None) -> None:
        if polls == 2:
            assert reason is not None and "no AVAILABLE model version (states: LOADING)" in reason
            state["value"] = "AVAILABLE"

    async with aiohttp.ClientSession() as session:
        assert await wait_until_healthy(session, readiness_endpoints(config), 10, on_poll=on_poll) == 3


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
            await wait_until_healthy(
                session, [Endpoint(f"http://127.0.0.1:{port}/health")], 10, on_poll=on_poll
            )
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
                await wait_until_healthy(session, [Endpoint(str(server.make_url("/ready")))], 0.2)
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

    endpoint = Endpoint("http://127.0.0.1:9/never")  # discard port: refused at once
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ServerNeverHealthy):
            await wait_until_healthy(session, [endpoint], 30, clock=lambda: now[0], sleep=fake_sleep)
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
