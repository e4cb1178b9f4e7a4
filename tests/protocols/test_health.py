"""The protocol-agnostic health part: asking HTTP endpoints and the wait loop, against real
loopback servers (aiohttp test servers on port 0). Each protocol's own endpoints are tested with it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.protocols.support import ServerFactory, app_with
from tests.protocols.support import server as oip_config
from warmgate.protocols import make_adapter
from warmgate.protocols.health import (
    HealthCheck,
    Mistake,
    ServerMisconfigured,
    ServerNeverHealthy,
    check_endpoints,
    wait_until_healthy,
)
from warmgate.protocols.readiness import Endpoint


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


async def test_polls_stay_frequent_for_the_whole_start_timeout() -> None:
    """Each interval is start-up latency added to the pod: short at first, where a fast server
    may come up, and never over a tenth of a second later, however long the load. Driven by a
    fake clock, not by waiting."""
    now = [0.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async with aiohttp.ClientSession() as session:
        never = asking(session, "http://127.0.0.1:9/never")  # discard port: refused at once
        with pytest.raises(ServerNeverHealthy):
            await wait_until_healthy(never, 30, clock=lambda: now[0], sleep=fake_sleep)
    late = [w for w, t in zip(waits, _elapsed(waits), strict=True) if t > 12]
    assert waits[0] <= 0.05
    assert late and max(waits) <= 0.1


# Moments a server turns ready after a long load, anywhere within a poll interval: a wait that
# backed off to one poll a second noticed at least one of them 0.3-1 s late.
FLIP_TIMES_S = (10.35, 12.03, 25.51, 47.77, 299.9)


@pytest.mark.timeout(30)
async def test_a_server_ready_after_a_long_load_is_noticed_within_a_fifth_of_a_second(
    aiohttp_server: ServerFactory,
) -> None:
    """A real loopback server that turns ready when the fake clock passes the flip time; the
    wait must return (having seen a 200) within 0.2 s of fake time after it."""
    clock = FakeClock()
    flip_at = [0.0]

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=200 if clock.now >= flip_at[0] else 503, text="loading")

    server = await aiohttp_server(app_with({"/ready": ready}))
    late_by: dict[float, float] = {}
    async with aiohttp.ClientSession() as session:
        check = asking(session, str(server.make_url("/ready")))
        for flip in FLIP_TIMES_S:
            clock.now, flip_at[0] = 0.0, flip
            await wait_until_healthy(check, 600, clock=clock, sleep=clock.sleep)
            late_by[flip] = clock.now - flip
    assert all(0 <= late <= 0.2 for late in late_by.values()), late_by


def _elapsed(waits: list[float]) -> list[float]:
    total, out = 0.0, []
    for wait in waits:
        out.append(total)
        total += wait
    return out


# ---- failing fast on an unambiguous mistake (the `diagnose` hook) --------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def failing_check(clock: FakeClock) -> HealthCheck:
    async def check(_timeout_s: float) -> str | None:
        clock.now += 0.001
        return "HTTP 404"

    return check


@pytest.mark.timeout(10)
async def test_a_mistake_that_lasts_its_grace_period_ends_the_wait_early() -> None:
    clock = FakeClock()

    async def diagnose(reason: str | None, _timeout_s: float) -> Mistake | None:
        return Mistake("unknown-model", "model m is not served", grace_s=3.0)

    with pytest.raises(ServerMisconfigured) as caught:
        await wait_until_healthy(failing_check(clock), 600, clock=clock, sleep=clock.sleep, diagnose=diagnose)
    assert 3.0 <= clock.now < 4.0, "after the grace period, not the 600 s start timeout"
    assert caught.value.last_error == "model m is not served"
    assert isinstance(caught.value, ServerNeverHealthy), "the same exit code as never healthy"


@pytest.mark.timeout(10)
async def test_a_mistake_that_comes_and_goes_starts_its_grace_period_again() -> None:
    clock = FakeClock()
    calls = 0

    async def diagnose(reason: str | None, _timeout_s: float) -> Mistake | None:
        nonlocal calls
        calls += 1
        # Seen for ~2 s, gone once, then seen for good: the grace runs from the return.
        if calls == 5:
            return None
        return Mistake("unknown-model", "gone", grace_s=3.0)

    with pytest.raises(ServerMisconfigured):
        await wait_until_healthy(failing_check(clock), 600, clock=clock, sleep=clock.sleep, diagnose=diagnose)
    assert clock.now > 5.0


@pytest.mark.timeout(10)
async def test_a_passing_poll_with_a_mistake_is_not_healthy() -> None:
    async def passes(_timeout_s: float) -> str | None:
        return None

    async def diagnose(reason: str | None, _timeout_s: float) -> Mistake | None:
        assert reason is None
        return Mistake("port-taken", "port 8000 was already in use before the server started", grace_s=30)

    with pytest.raises(ServerMisconfigured) as caught:
        await wait_until_healthy(passes, 600, diagnose=diagnose)
    assert "already in use" in str(caught.value)


@pytest.mark.timeout(10)
async def test_diagnoses_do_not_slow_the_polling_cadence() -> None:
    clock = FakeClock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await clock.sleep(seconds)

    async def diagnose(reason: str | None, _timeout_s: float) -> Mistake | None:
        return None

    with pytest.raises(ServerNeverHealthy):
        await wait_until_healthy(failing_check(clock), 5, clock=clock, sleep=sleep, diagnose=diagnose)
    assert waits[0] <= 0.05 and max(waits) <= 0.1


# ---- OIP: is the model unknown, or still loading? ------------------------------------------------


def oip_server_app(index: web.Response | None, model_status: int = 404) -> web.Application:
    async def server_ready(_: web.Request) -> web.Response:
        return web.Response(text="{}")

    async def model_ready(_: web.Request) -> web.Response:
        return web.json_response(
            {"error": "unknown model 'm'; this server serves 'demo'"}, status=model_status
        )

    async def repository_index(_: web.Request) -> web.Response:
        assert index is not None
        return index

    app = app_with({"/v2/health/ready": server_ready, "/v2/models/m/ready": model_ready})
    if index is not None:
        app.router.add_post("/v2/repository/index", repository_index)
    return app


async def unknown_model(server: TestServer) -> str | None:
    adapter = make_adapter(oip_config(url=str(server.make_url("")).rstrip("/")))
    async with aiohttp.ClientSession() as session:
        return await adapter.unknown_model(session, 5)


@pytest.mark.timeout(10)
async def test_oip_404_without_an_index_is_an_unknown_model(aiohttp_server: ServerFactory) -> None:
    reason = await unknown_model(await aiohttp_server(oip_server_app(index=None)))
    assert reason is not None
    assert reason.startswith("server.model 'm' is not served: GET ")
    assert "HTTP 404" in reason and "this server serves 'demo'" in reason


@pytest.mark.timeout(10)
async def test_oip_index_names_the_models_served(aiohttp_server: ServerFactory) -> None:
    index = web.json_response([{"name": "resnet", "state": "READY"}, {"name": "bert", "state": "READY"}])
    # Triton answers 400 for a model it does not know; with an index that is unambiguous too.
    reason = await unknown_model(await aiohttp_server(oip_server_app(index=index, model_status=400)))
    assert reason is not None and reason.endswith("the server serves 'bert', 'resnet'")


@pytest.mark.timeout(10)
async def test_oip_a_model_in_the_index_is_loading_not_unknown(aiohttp_server: ServerFactory) -> None:
    index = web.json_response([{"name": "m", "state": "LOADING"}])
    assert await unknown_model(await aiohttp_server(oip_server_app(index=index))) is None


@pytest.mark.timeout(10)
async def test_oip_400_without_an_index_is_not_judged(aiohttp_server: ServerFactory) -> None:
    assert await unknown_model(await aiohttp_server(oip_server_app(index=None, model_status=400))) is None
