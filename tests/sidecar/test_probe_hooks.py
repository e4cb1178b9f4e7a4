"""The probe's two hooks that `warmgate sidecar` builds on, in-process on a real loopback port: a
companion task beside the HTTP server (its return ends the process with its code; on TERM its
`stop` is awaited before exit) and extra GET routes (served, and counted under their own path)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.probe.fakes import probe_parts
from tests.sidecar.conftest import sidecar_config
from tests.support.procs import free_port
from warmgate.config import Config, load_config
from warmgate.probe.app import ExtraRoute
from warmgate.probe.http_server import Response
from warmgate.probe.server import serve
from warmgate.protocols import adapters

pytestmark = pytest.mark.timeout(30)


class Companion:
    def __init__(self, *, returns: int | None = None, stop_takes_s: float = 0.0) -> None:
        self.returns = returns
        self.stop_takes_s = stop_takes_s
        self.stopped_at: float | None = None
        self.cancelled = False

    async def run(self) -> int:
        if self.returns is not None:
            return self.returns
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        await asyncio.sleep(self.stop_takes_s)
        self.stopped_at = time.monotonic()


def config(tmp_path: Path) -> Config:
    return load_config(sidecar_config(tmp_path / "warmup.yaml", free_port()), protocols=adapters())


async def serving(
    tmp_path: Path, companion: Companion, signals: asyncio.Queue[signal.Signals], routes: list[ExtraRoute]
) -> tuple[asyncio.Task[int], str]:
    listening: asyncio.Future[list[tuple[str, int]]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            *probe_parts(config(tmp_path)), host="127.0.0.1", port=0, shutdown_delay_s=0.2, environ={},
            on_listening=listening.set_result, signals=signals, companion=companion, extra_routes=routes,
        )
    )  # fmt: skip
    (host, port), *_ = await asyncio.wait_for(listening, 10)
    return task, f"http://{host}:{port}"


async def test_a_companion_that_returns_ends_serve_with_its_code(tmp_path: Path) -> None:
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    task, _base = await serving(tmp_path, Companion(returns=82), signals, [])
    assert await asyncio.wait_for(task, 10) == 82


async def test_term_waits_for_the_companions_stop_then_cancels_its_run(tmp_path: Path) -> None:
    async def hello() -> Response:
        return Response.json({"hello": True})

    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    companion = Companion(stop_takes_s=1.0)
    task, base = await serving(tmp_path, companion, signals, [ExtraRoute("/hello", hello)])
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/hello") as response:
            assert (response.status, await response.json()) == (200, {"hello": True})
        async with session.get(base + "/metrics") as response:
            exposition = await response.text()
    assert 'warmgate_probe_requests_total{code="200",endpoint="/hello"} 1.0' in exposition
    signalled = time.monotonic()
    signals.put_nowait(signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0
    # Not after the 0.2 s shutdown delay alone: after the companion's stop finished.
    assert companion.stopped_at is not None and companion.stopped_at - signalled >= 1.0
    assert time.monotonic() - signalled >= 1.0
    assert companion.cancelled


async def test_a_second_signal_does_not_wait_for_the_companions_stop(tmp_path: Path) -> None:
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    companion = Companion(stop_takes_s=30.0)
    task, _base = await serving(tmp_path, companion, signals, [])
    signalled = time.monotonic()
    signals.put_nowait(signal.SIGTERM)
    signals.put_nowait(signal.SIGINT)
    assert await asyncio.wait_for(task, 10) == 0
    assert time.monotonic() - signalled < 5
    assert companion.stopped_at is None and companion.cancelled
