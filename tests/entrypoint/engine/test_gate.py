"""The gate: each threshold fails on its own, with its measured value and a one-line reason."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.entrypoint.engine.conftest import ServerFactory, engine_config, shape
from warmgate.entrypoint.engine import gate
from warmgate.entrypoint.engine.evidence import Evidence, PayloadTooLarge, ShapeFailed, ShapesUnavailable
from warmgate.entrypoint.engine.memory import GpuSample
from warmgate.state import GateCheck, MemoryReport, Report

Prove = Callable[..., Awaitable[Report]]
GIB = 1024**3


def failed(report: Report) -> list[GateCheck]:
    return [c for c in report.gate.checks if not c.passed]


def by_name(report: Report, name: str) -> GateCheck:
    [found] = [c for c in report.gate.checks if c.name == name]
    return found


async def test_latency_slo_p95_and_p99(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    url, _ = await oip_server(delay=0.02)
    config = engine_config(
        url,
        tmp_path,
        shapes=[shape("bs1", 1)],
        gate={"p95_ms": 5, "p99_ms": 1000},
        load_test={"concurrency": 2},
    )
    report = await prove(config)
    assert [c.name for c in failed(report)] == ["p95_ms"]
    p95 = by_name(report, "p95_ms")
    assert p95.value is not None and p95.value >= 20 and p95.threshold == 5
    assert report.gate.reason.startswith("load-test p95 ") and report.gate.reason.endswith(
        "exceeds the SLO of 5 ms"
    )
    assert by_name(report, "p99_ms").passed


async def test_error_rate(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    # bs1 answers its warmup (3), its check inputs (4 x 2), then fails every 2nd request.
    url, _ = await oip_server(
        fail={1: (503, "overloaded")}, fail_when=lambda call: call > 11 and call % 2 == 0
    )
    config = engine_config(url, tmp_path, shapes=[shape("bs1", 1)], gate={"max_error_rate": 0.1})
    report = await prove(config)
    rate = by_name(report, "error_rate")
    assert not rate.passed
    assert rate.value is not None and 0.3 < rate.value < 0.7
    assert report.load_test is not None and set(report.load_test.errors) == {"http_503"}
    assert rate.detail.startswith("load test: ") and "failed (http_503 " in rate.detail
    assert report.load_test.per_shape_errors["bs1"]["http_503"] == report.load_test.errors["http_503"]


async def test_post_warm_ratio_and_its_floor(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    url, _ = await oip_server()
    strict = {"max_first_to_steady_ratio": 0.01, "ratio_floor_ms": 0}
    report = await prove(engine_config(url, tmp_path / "a", shapes=[shape("bs1", 1)], gate=strict))
    ratio = by_name(report, "post_warm_ratio[bs1]")
    assert not ratio.passed and ratio.threshold == 0.01
    assert "shape bs1: first request after warmup took" in report.gate.reason
    assert "its steady p50 (limit 0.01x): still cold" in report.gate.reason
    # Loopback requests take well under a millisecond: below the floor no ratio fails.
    floored = await prove(
        engine_config(url, tmp_path / "b", shapes=[shape("bs1", 1)], gate={**strict, "ratio_floor_ms": 50})
    )
    assert floored.gate.passed, floored.gate.reason


async def test_memory_headroom_against_the_limit(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server()
    # The "server" here is this test process: its real tree memory is sampled with psutil.
    config = engine_config(url, tmp_path, shapes=[shape("bs1", 1)], memory={"limit_bytes": 1024 * 1024})
    report = await prove(config, server_pid=os.getpid())
    memory = by_name(report, "memory")
    assert not memory.passed
    assert report.memory is not None
    assert report.memory.peak_rss_bytes is not None and report.memory.peak_rss_bytes > 1024 * 1024
    assert report.memory.limit_source == "config memory.limit_bytes"
    assert report.memory.samples >= 2
    assert "of the 1 MiB limit; 10% headroom required" in memory.detail

    roomy = engine_config(url, tmp_path / "b", shapes=[shape("bs1", 1)], memory={"limit_bytes": 1024 * GIB})
    assert (await prove(roomy, server_pid=os.getpid())).gate.passed


async def test_limit_from_the_cgroup_when_not_configured(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server()
    config = engine_config(url, tmp_path, shapes=[shape("bs1", 1)])
    report = await prove(
        config, server_pid=os.getpid(), memory_limit=lambda: (64 * GIB, "cgroup v2 /x/memory.max")
    )
    assert report.memory is not None
    assert report.memory.limit_bytes == 64 * GIB and report.memory.limit_source == "cgroup v2 /x/memory.max"
    assert by_name(report, "memory").passed


async def test_gpu_memory_headroom(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    url, _ = await oip_server()

    def gpus() -> list[GpuSample]:
        return [GpuSample(0, "H100", 10 * GIB, 80 * GIB), GpuSample(1, "H100", 79 * GIB, 80 * GIB)]

    report = await prove(engine_config(url, tmp_path, shapes=[shape("bs1", 1)]), gpu_reader=gpus)
    assert by_name(report, "gpu_memory[0]").passed
    gpu1 = by_name(report, "gpu_memory[1]")
    assert not gpu1.passed
    assert gpu1.detail == "GPU 1 peak memory 80896 MiB is 99% of 81920 MiB; 5% headroom required"
    assert report.memory is not None and [g.index for g in report.memory.gpus] == [0, 1]


async def test_reason_lists_the_first_failures(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=0.01)
    gate: dict[str, Any] = {"p95_ms": 1, "p99_ms": 1, "max_first_to_steady_ratio": 0.01, "ratio_floor_ms": 0}
    report = await prove(engine_config(url, tmp_path, gate=gate))
    assert len(failed(report)) == 4
    assert report.gate.reason.endswith("(and 1 more)")


def test_the_gate_alone_turns_stage_failures_into_checks(tmp_path: Path) -> None:
    """Stages describe what stopped them; the gate names the check and keeps the measurements."""
    config = engine_config("http://127.0.0.1:9", tmp_path)
    too_large = gate.failure_check(PayloadTooLarge("bs8", 3 * 1024 * 1024, 1024 * 1024, "serialised"))
    assert (too_large.name, too_large.passed, too_large.value, too_large.threshold) == (
        "payload[bs8]",
        False,
        3 * 1024 * 1024,
        1024 * 1024,
    )
    assert "payload 3.0 MiB (serialised) exceeds warmup.max_payload_bytes 1.0 MiB" in too_large.detail
    post_warm = gate.failure_check(ShapeFailed("post_warm", "bs1", "shape bs1: post-warm request: HTTP 500"))
    assert (post_warm.name, post_warm.detail) == ("post_warm[bs1]", "shape bs1: post-warm request: HTTP 500")
    assert gate.failure_check(ShapesUnavailable("shapes: auto: no inputs")).name == "shapes"

    memory = MemoryReport(samples=0, limit_bytes=None, limit_source="")
    verdict = gate.evaluate(config, Evidence([], [], None, memory, ShapeFailed("warmup", "bs1", "boom")))
    assert not verdict.passed and verdict.reason == "boom"
    nothing = gate.evaluate(config, Evidence([], [], None, memory))
    assert nothing.passed and nothing.reason == "no shapes configured: readiness rests on health alone"
