"""Loopback fakes for the probe tests: a model server, state documents, and a deadline poller."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from warmgate.config import Config, validate_config
from warmgate.probe.planning import probe_settings, server_check
from warmgate.probe.server_check import ServerCheck
from warmgate.probe.settings import ProbeSettings
from warmgate.state import (
    ConcurrencyCheckReport,
    GateCheck,
    GateVerdict,
    GpuMemory,
    LatencyStats,
    LoadTestReport,
    MemoryReport,
    Report,
    ShapeReport,
)

T = TypeVar("T")


@dataclass
class FakeModelServer:
    """An Open Inference Protocol health surface whose answers a test controls.

    `hold` makes every health request wait until the event is set: a server slower than any
    timeout, without sleeping.
    """

    ready_status: int = 200
    live_status: int = 200
    hold: asyncio.Event | None = None
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    in_flight: int = 0
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/health/ready", self._ready)
        app.router.add_get("/v2/health/live", self._live)
        app.router.add_get("/v2/models/{model}/ready", self._ready)
        return app

    async def _answer(self, request: web.Request, status: int) -> web.Response:
        self.requests[request.path] += 1
        self.in_flight += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            return web.json_response({"ready": status == 200}, status=status)
        finally:
            self.in_flight -= 1

    async def _ready(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.ready_status)

    async def _live(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.live_status)


def make_config(state_dir: Path, server_url: str, **probe: Any) -> Config:
    raw = {
        "state_dir": str(state_dir),
        "server": {"url": server_url, "protocol": "oip", "model": "demo", "command": ["unused"]},
        # Tests shrink timeouts instead of waiting longer.
        "probe": {"check_timeout_s": 2.0, "check_cache_s": 0.0, "live_failures": 3, **probe},
    }
    return validate_config(raw, "test", {})


def probe_parts(config: Config) -> tuple[ProbeSettings, ServerCheck]:
    """The settings and the model-server check `warmgate probe` builds from `config`."""
    settings = probe_settings(config)
    return settings, server_check(settings, config)


def full_report(instance_id: str, **changes: Any) -> Report:
    """A report with every section filled, as a passing gate writes it."""
    steady = LatencyStats(
        count=40, mean_s=0.011, p50_s=0.010, p90_s=0.013, p95_s=0.014, p99_s=0.02, max_s=0.025
    )
    report = Report(
        instance_id=instance_id,
        created_at=1_700_000_000.0,
        server_url="http://127.0.0.1:8000",
        protocol="oip",
        model="demo",
        phases={"waiting-for-server": 1.5, "warming": 4.25, "load-testing": 5.0},
        shapes=[
            ShapeReport(
                name="bs1",
                batch_size=1,
                requests=8,
                first_s=0.9,
                steady=steady,
                first_to_steady_ratio=90.0,
                post_warm_s=0.012,
                post_warm_ratio=1.2,
                concurrency_check=ConcurrencyCheckReport(
                    variants=4,
                    checked=120,
                    matched=117,
                    mismatches=3,
                    max_abs_deviation=0.5,
                    first_mismatch="request 17, output probs[3]: expected 0.25, got 0.75",
                ),
            ),
            ShapeReport(
                name="bs8",
                batch_size=8,
                requests=8,
                first_s=1.8,
                steady=steady,
                first_to_steady_ratio=180.0,
                concurrency_check=ConcurrencyCheckReport(skipped="compare: false (opted out)"),
            ),
        ],
        load_test=LoadTestReport(
            mode="closed",
            duration_s=5.0,
            concurrency=2,
            requests=480,
            errors={"timeout": 1, "http_500": 2},
            throughput_rps=95.5,
            latency=LatencyStats(count=477, p50_s=0.02, p90_s=0.03, p95_s=0.035, p99_s=0.05, max_s=0.08),
        ),
        memory=MemoryReport(
            peak_rss_bytes=512 * 2**20,
            limit_bytes=2 * 2**30,
            gpus=[GpuMemory(index=0, name="H200", peak_used_bytes=3 * 2**30, total_bytes=141 * 2**30)],
        ),
        gate=GateVerdict(
            passed=True,
            checks=[
                GateCheck(name="error_rate", passed=True, value=0.006, threshold=0.01),
                GateCheck(name="post_warm_ratio[bs1]", passed=True, value=1.2, threshold=3.0),
            ],
            reason="all checks passed",
        ),
    )
    return replace(report, **changes)


async def poll_until(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], *, timeout: float = 10.0, what: str = ""
) -> T:
    """Call `probe` until `accept` says yes; fail with the last value at the deadline. Yields to the
    event loop between calls (no fixed sleep decides the outcome)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'condition'}; last value: {value!r}")
        await asyncio.sleep(0.005)
