"""The gate: each threshold fails on its own, with its measured value and a one-line reason."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.entrypoint.engine.conftest import ServerFactory, engine_config, shape
from warmgate.entrypoint.engine import gate
from warmgate.entrypoint.engine.evidence import Evidence, PayloadTooLarge, ShapeFailed, ShapesUnavailable
from warmgate.entrypoint.engine.memory import GpuSample
from warmgate.entrypoint.engine.stats import ratio_limit
from warmgate.state import GateCheck, LatencyStats, MemoryReport, Report, ShapeReport

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


async def test_post_warm_ratio_fails_a_cold_shape_and_passes_a_warm_one(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # bs1 pays a one-time 0.2 s (about 100x steady) on its 4th request: after a warmup of 3, the
    # post-warm check's first request pays it (a JIT that needs more warmup than it got). bs1 is
    # out of the load test (weight 0) and the concurrency check, so the call count is exact.
    url, _ = await oip_server(delay=0.002, cold_at_call={1: {4: 0.2}})
    shapes = [shape("bs1", 1, count=3, weight=0, compare=False), shape("bs4", 4)]
    report = await prove(engine_config(url, tmp_path / "a", shapes=shapes, gate={"ratio_floor_ms": 0}))
    cold = by_name(report, "post_warm_ratio[bs1]")
    assert not cold.passed and cold.value is not None and cold.value > 20
    assert cold.threshold is not None and 3 <= cold.threshold < cold.value
    assert cold.detail.startswith("shape bs1: first request after warmup took ")
    assert (
        "its steady p50 (limit " in cold.detail
        and "x): still cold (steady: 25 serial requests after it" in cold.detail
    )
    assert [c.name for c in failed(report)] == ["post_warm_ratio[bs1]"]
    [bs1, _bs4] = report.shapes
    # It looked cold against the 5 requests after it, so 20 more measured the noise first.
    assert bs1.post_warm_baseline is not None and bs1.post_warm_baseline.count == 5 + 20
    assert bs1.post_warm_s is not None and bs1.post_warm_s >= 0.2
    # A floor above the cold request's latency lets it pass: no user feels a cold start under it.
    url, _ = await oip_server(delay=0.002, cold_at_call={1: {4: 0.2}})
    floored = await prove(engine_config(url, tmp_path / "b", shapes=shapes, gate={"ratio_floor_ms": 500}))
    assert floored.gate.passed, floored.gate.reason


async def test_post_warm_limit_rises_to_the_noise_the_baseline_showed(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # Every shape's first post-warm request (call 4) takes about 10x the steady 5 ms. bs1's
    # steady requests after it are quiet: 10x is over the limit, cold. One of bs2's 5 steady
    # requests (call 6) hiccups by 0.3 s, and one of bs4's 20 confirming ones (call 15, sent
    # because the first 5 were quiet) by 0.2 s: on this machine just now, 10x is noise.
    cold_at_call = {1: {4: 0.045}, 2: {4: 0.045, 6: 0.3}, 4: {4: 0.045, 15: 0.2}}
    url, _ = await oip_server(delay=0.005, cold_at_call=cold_at_call)
    shapes = [shape(f"bs{b}", b, count=3, weight=0, compare=False) for b in (1, 2, 4)]
    config = engine_config(
        url, tmp_path, shapes=shapes, load_test={"enabled": False}, gate={"ratio_floor_ms": 0}
    )
    report = await prove(config)
    quiet, noisy, confirmed = (by_name(report, f"post_warm_ratio[bs{b}]") for b in (1, 2, 4))
    for check in (quiet, noisy, confirmed):
        assert check.value is not None and check.value > 4, check
    assert not quiet.passed, quiet
    assert noisy.passed and noisy.threshold is not None and noisy.threshold > 20
    assert confirmed.passed and confirmed.threshold is not None and confirmed.threshold > 15
    assert [s.post_warm_baseline.count for s in report.shapes if s.post_warm_baseline] == [25, 5, 25]


def test_post_warm_limit_is_never_below_the_configured_ratio(tmp_path: Path) -> None:
    config = engine_config(
        "http://127.0.0.1:9", tmp_path, gate={"max_first_to_steady_ratio": 3, "ratio_floor_ms": 0}
    )
    steady = LatencyStats(count=5, p50_s=0.010, max_s=0.011)
    warm = ShapeReport(
        name="bs1", batch_size=1, post_warm_s=0.025, post_warm_ratio=2.5, post_warm_baseline=steady
    )
    cold = ShapeReport(
        name="bs2", batch_size=2, post_warm_s=0.1, post_warm_ratio=10.0, post_warm_baseline=steady
    )
    checks = gate.ratio_checks(config, [warm, cold])
    assert [(c.passed, c.threshold) for c in checks] == [(True, 3), (False, 3)]
    assert checks[1].detail == (
        "shape bs2: first request after warmup took 100.0 ms, 10.0x its steady p50 (limit 3x): still cold "
        "(steady: 5 serial requests after it, p50 10.0 ms, max 11.0 ms)"
    )
    assert ratio_limit(3, steady) == 3 and ratio_limit(3, None) == 3
    assert ratio_limit(3, LatencyStats(count=5, p50_s=0.010, max_s=0.05)) == pytest.approx(5)


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
    gate_config: dict[str, Any] = {"p95_ms": 1, "p99_ms": 1}
    config = engine_config(url, tmp_path, gate=gate_config, memory={"limit_bytes": 1024 * 1024})

    def full_gpu() -> list[GpuSample]:
        return [GpuSample(0, "H100", 80 * GIB, 80 * GIB)]

    report = await prove(config, server_pid=os.getpid(), gpu_reader=full_gpu)
    assert [c.name for c in failed(report)] == ["p95_ms", "p99_ms", "memory", "gpu_memory[0]"]
    assert report.gate.reason.endswith("(and 1 more)")


async def test_a_gate_without_a_latency_slo_says_it_judged_warmth_only(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = await oip_server()
    with caplog.at_level(logging.WARNING, logger="warmgate.engine"):
        report = await prove(engine_config(url, tmp_path / "a", shapes=[shape("bs1", 1)]))
    assert report.gate.passed and report.gate.reason == f"all {len(report.gate.checks)} checks passed"
    assert report.gate.notes == [
        "no latency SLO is set (gate.p95_ms, gate.p99_ms): the gate judges warmth, errors, memory and "
        "concurrency only, not whether the load test's latency is acceptable"
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"gate passed, but {report.gate.notes[0]}"]
    # With an SLO the gate judges latency too: no note, no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="warmgate.engine"):
        judged = await prove(
            engine_config(url, tmp_path / "b", shapes=[shape("bs1", 1)], gate={"p99_ms": 1000})
        )
    assert judged.gate.passed and judged.gate.notes == []
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    # An SLO with the load test off judged nothing: said so.
    config = engine_config(url, tmp_path / "c", shapes=[shape("bs1", 1)], gate={"p95_ms": 50})
    config = config.model_copy(update={"load_test": config.load_test.model_copy(update={"enabled": False})})
    unjudged = await prove(config)
    assert unjudged.gate.notes == [
        "a latency SLO is set but load_test.enabled is false: the SLO is never judged"
    ]


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
