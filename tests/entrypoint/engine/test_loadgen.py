"""The load generator against a real loopback server: closed and open loop, and why open loop
charges a stall to every request that should have been sent during it."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
import numpy as np
from aiohttp import web

from warmgate.entrypoint.engine.loadgen import Send, Target, closed_loop, open_loop, weighted_schedule
from warmgate.protocols import PreparedRequest, send

TIMEOUT = aiohttp.ClientTimeout(total=5)


def sender(session: aiohttp.ClientSession) -> Send:
    return functools.partial(send, session, timeout=TIMEOUT)


ServeApp = Callable[[web.Application], Awaitable[str]]


class Trivial:
    """An endpoint that takes `delay`, tracks overlap, and can stall everyone once."""

    def __init__(self, delay: float = 0.002, stall_at: int | None = None, stall_s: float = 0.0) -> None:
        self.delay = delay
        self.stall_at = stall_at
        self.stall_s = stall_s
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.paths: Counter[str] = Counter()
        self.lock = asyncio.Lock()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.paths[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.stall_at is not None:
                # A single-threaded server: one slow request holds everyone else up.
                async with self.lock:
                    if self.calls == self.stall_at:
                        await asyncio.sleep(self.stall_s)
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if request.path == "/fail":
            return web.Response(status=500)
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        return app


def targets(url: str, *paths: str) -> list[Target]:
    return [
        Target(PreparedRequest("POST", f"{url}/{path}", b"{}"), label) for label, path in enumerate(paths)
    ]


async def test_closed_loop_keeps_the_concurrency_for_the_duration(
    serve_app: ServeApp, session: aiohttp.ClientSession
) -> None:
    server = Trivial(delay=0.005)
    url = await serve_app(server.app())
    samples = await closed_loop(sender(session), targets(url, "a"), [0], concurrency=3, duration_s=0.3)
    assert server.max_in_flight == 3
    assert 0.3 <= samples.elapsed_s < 0.5
    assert len(samples) == server.calls > 20
    assert samples.successes() == len(samples)
    assert all(latency >= 0.005 for latency in samples.latencies)


async def test_closed_loop_stops_at_max_requests(serve_app: ServeApp, session: aiohttp.ClientSession) -> None:
    server = Trivial()
    url = await serve_app(server.app())
    samples = await closed_loop(
        sender(session), targets(url, "a"), [0], concurrency=4, duration_s=30, max_requests=10
    )
    assert len(samples) == server.calls == 10
    assert samples.elapsed_s < 5


async def test_mix_follows_the_schedule_and_errors_are_counted_by_kind(
    serve_app: ServeApp, session: aiohttp.ClientSession
) -> None:
    server = Trivial(delay=0)
    url = await serve_app(server.app())
    schedule = weighted_schedule([3, 1], length=400)
    samples = await closed_loop(
        sender(session),
        targets(url, "ok", "fail"),
        schedule,
        concurrency=2,
        duration_s=30,
        max_requests=400,
    )
    assert server.paths["/ok"] == Counter(schedule)[0]
    kinds = Counter(samples.kinds)
    assert kinds["http_500"] == server.paths["/fail"] == Counter(samples.labels)[1]
    assert 0.65 < kinds[""] / 400 < 0.85


async def test_open_loop_holds_the_rate(serve_app: ServeApp, session: aiohttp.ClientSession) -> None:
    server = Trivial()
    url = await serve_app(server.app())
    samples = await open_loop(sender(session), targets(url, "a"), [0], rate=200, duration_s=0.5)
    assert len(samples) == server.calls == 100
    assert 0.49 <= samples.elapsed_s < 0.8


async def test_open_loop_charges_a_stall_to_every_request_it_delayed(
    serve_app: ServeApp, session: aiohttp.ClientSession
) -> None:
    # The server stalls for 0.3 s at its 10th request. A closed loop with one connection sees
    # one slow request; the open loop at 100 req/s also sees the ~30 that were due during the
    # stall, each charged from when it should have been sent.
    closed_server = Trivial(stall_at=10, stall_s=0.3)
    closed = await closed_loop(
        sender(session),
        targets(await serve_app(closed_server.app()), "a"),
        [0],
        concurrency=1,
        duration_s=0.6,
    )
    closed_latencies = np.asarray(closed.latencies)
    assert (closed_latencies > 0.1).sum() == 1
    assert np.percentile(closed_latencies, 90) < 0.05

    open_server = Trivial(stall_at=10, stall_s=0.3)
    opened = await open_loop(
        sender(session),
        targets(await serve_app(open_server.app()), "a"),
        [0],
        rate=100,
        duration_s=0.6,
    )
    open_latencies = np.asarray(opened.latencies)
    assert len(open_latencies) == 60
    assert (open_latencies > 0.1).sum() >= 15
    assert np.percentile(open_latencies, 90) > 0.1


def test_weighted_schedule_is_deterministic_and_proportional() -> None:
    schedule = weighted_schedule([2, 0, 1], length=3000)
    assert schedule == weighted_schedule([2, 0, 1], length=3000)
    counts = Counter(schedule)
    assert counts[1] == 0
    assert 0.62 < counts[0] / 3000 < 0.71


async def test_both_loops_end_when_should_stop_turns_true(
    serve_app: ServeApp, session: aiohttp.ClientSession
) -> None:
    # The hook early stopping uses: after the 25th answer neither loop starts another request
    # (the closed loop's workers each finish the one they have in flight).
    server = Trivial()
    url = await serve_app(server.app())
    closed = await closed_loop(
        sender(session),
        targets(url, "a"),
        [0],
        concurrency=2,
        duration_s=30,
        should_stop=lambda: server.calls >= 25,
    )
    assert 25 <= len(closed) <= 27 and closed.elapsed_s < 5
    server.calls = 0
    opened = await open_loop(
        sender(session),
        targets(url, "a"),
        [0],
        rate=200,
        duration_s=30,
        should_stop=lambda: server.calls >= 25,
    )
    assert 25 <= len(opened) < 100 and opened.elapsed_s < 5
