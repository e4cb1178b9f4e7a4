"""The readiness gate, the one judge: every `GateCheck` of a report is made here, from what the
stages measured (`Evidence`), each recorded with its measured value, so the verdict explains itself.

To add a check: a function here that turns evidence into `GateCheck`s, called from `evaluate`,
and its test in tests/entrypoint/engine/test_gate.py. If it needs a measurement no stage records
yet, the stage adds it to its report (state.py) or to `Evidence` (evidence.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from warmgate.config import Config, latency_slo_missing
from warmgate.entrypoint.engine.evidence import (
    Evidence,
    PayloadInvalid,
    PayloadTooLarge,
    ReadinessLost,
    ShapeFailed,
    ShapeRun,
    ShapesUnavailable,
    StageFailure,
)
from warmgate.entrypoint.engine.stats import ratio_limit
from warmgate.state import GateCheck, GateVerdict, LoadTestReport, MemoryReport, ShapeReport

# A failed verdict's reason lists at most this many failed checks (the report has all of them).
REASON_CHECKS = 3
MIB = 1024 * 1024


def evaluate(config: Config, evidence: Evidence) -> GateVerdict:
    """Every check, in the order the report lists them: what the warm stage saw per shape, the
    failure that ended the attempt early, then load test, post-warm ratio, memory, concurrency."""
    checks = warm_checks(evidence.runs)
    if evidence.stopped_by is not None:
        checks.append(failure_check(evidence.stopped_by))
    checks += load_checks(config, evidence.load)
    checks += token_checks(config, evidence.load)
    checks += ratio_checks(config, evidence.shapes)
    checks += memory_checks(config, evidence.memory)
    checks += concurrency_checks(
        config, evidence.shapes, evidence.load.concurrency if evidence.load else None
    )
    result = verdict(checks)
    result.notes = notes(config, evidence.load)
    if not evidence.runs and result.passed:
        result.reason = "no shapes configured: readiness rests on health alone"
    return result


def notes(config: Config, load: LoadTestReport | None) -> list[str]:
    """What a verdict did not judge. Without a latency SLO the gate proves the server warm
    (fast against its own steady state), error-free, within memory and safe under concurrency,
    not that its latency is acceptable: an overloaded replica can pass every check."""
    # The same words `warmgate check` warns with, from the same rule.
    missing = latency_slo_missing(config)
    if missing is not None:
        return [missing]
    if load is None or load.requests == 0:
        return ["a latency SLO is set but no load test ran: the SLO was not judged"]
    return []


def warm_checks(runs: Sequence[ShapeRun]) -> list[GateCheck]:
    """`warmup[shape]` passes for each shape whose warmup requests all succeeded; a shape that
    answered the same input two ways one request at a time fails `concurrency[shape]` now."""
    checks = []
    for run in runs:
        if run.warmed:
            checks.append(GateCheck(name=f"warmup[{run.shape.name}]", passed=True))
        if run.nondeterminism:
            checks.append(
                GateCheck(name=f"concurrency[{run.shape.name}]", passed=False, detail=run.nondeterminism)
            )
    return checks


def failure_check(failure: StageFailure) -> GateCheck:
    """The one failed check of a stage that could not go on."""
    if isinstance(failure, PayloadTooLarge):
        return GateCheck(
            name=f"payload[{failure.shape}]",
            passed=False,
            value=float(failure.size),
            threshold=float(failure.budget),
            detail=f"shape {failure.shape}: payload {failure.size / MIB:.1f} MiB ({failure.how}) exceeds "
            f"warmup.max_payload_bytes {failure.budget / MIB:.1f} MiB; refused before sending",
        )
    if isinstance(failure, PayloadInvalid):
        return GateCheck(name=f"payload[{failure.shape}]", passed=False, detail=failure.detail)
    if isinstance(failure, ShapeFailed):
        return GateCheck(name=f"{failure.stage}[{failure.shape}]", passed=False, detail=failure.detail)
    if isinstance(failure, ShapesUnavailable):
        return GateCheck(name="shapes", passed=False, detail=failure.detail)
    if isinstance(failure, ReadinessLost):
        return GateCheck(name="readiness", passed=False, detail=failure.detail)
    return GateCheck(name="engine", passed=False, detail=failure.detail)


def load_checks(config: Config, load: LoadTestReport | None) -> list[GateCheck]:
    if load is None:
        return []
    gate = config.gate
    checks: list[GateCheck] = []
    if load.requests == 0:
        return [GateCheck(name="load_test", passed=False, detail="the load test completed no requests")]
    errors = sum(load.errors.values())
    rate = errors / load.requests
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(load.errors.items()))
    checks.append(
        GateCheck(
            name="error_rate",
            passed=rate <= gate.max_error_rate,
            value=rate,
            threshold=gate.max_error_rate,
            detail=f"load test: {errors} of {load.requests} requests failed ({kinds})" if errors else "",
        )
    )
    for name, limit_ms, measured in (
        ("p95_ms", gate.p95_ms, load.latency.p95_s),
        ("p99_ms", gate.p99_ms, load.latency.p99_s),
    ):
        if limit_ms is None:
            continue
        if measured is None:
            checks.append(
                GateCheck(name=name, passed=False, threshold=limit_ms, detail="no successful requests")
            )
            continue
        value = measured * 1000
        passed = value <= limit_ms
        detail = "" if passed else f"load-test {name[:3]} {value:.1f} ms exceeds the SLO of {limit_ms:g} ms"
        checks.append(GateCheck(name=name, passed=passed, value=value, threshold=limit_ms, detail=detail))
    return checks


def token_checks(config: Config, load: LoadTestReport | None) -> list[GateCheck]:
    """`ttft_p95_ms` and `itl_p95_ms`: the load test's time to first token and inter-token
    latency p95 over the streamed prompt shapes (a non-streamed answer's first token arrives with
    its last, so it would judge the whole answer as its TTFT), when an SLO is configured."""
    if load is None or load.requests == 0:
        return []
    gate = config.gate
    tokens = load.tokens
    checks = []
    for name, what, limit_ms, stats in (
        ("ttft_p95_ms", "TTFT", gate.ttft_p95_ms, tokens.ttft if tokens else None),
        ("itl_p95_ms", "ITL", gate.itl_p95_ms, tokens.itl if tokens else None),
    ):
        if limit_ms is None:
            continue
        if stats is None or stats.p95_s is None:
            detail = (
                "no streamed completion succeeded in the load test"
                if name == "ttft_p95_ms"
                else "no gap between streamed tokens was measured (no streamed answer of two tokens or more)"
            )
            checks.append(GateCheck(name=name, passed=False, threshold=limit_ms, detail=detail))
            continue
        value = stats.p95_s * 1000
        passed = value <= limit_ms
        detail = "" if passed else f"load-test {what} p95 {value:.1f} ms exceeds the SLO of {limit_ms:g} ms"
        checks.append(GateCheck(name=name, passed=passed, value=value, threshold=limit_ms, detail=detail))
    return checks


def ratio_checks(config: Config, shapes: Sequence[ShapeReport]) -> list[GateCheck]:
    """`post_warm_ratio[shape]`: the first post-warm request over the p50 of the serial requests
    after it (postwarm.py; times to first token for a prompt shape), against the larger of
    `gate.max_first_to_steady_ratio` and the noise those requests showed (stats.py
    `ratio_limit`): a first request no further from the steady p50 than a steady request itself
    got is not evidence of a cold start."""
    configured = config.gate.max_first_to_steady_ratio
    if configured is None:
        return []
    floor_s = config.gate.ratio_floor_ms / 1000
    checks = []
    for shape in shapes:
        name = f"post_warm_ratio[{shape.name}]"
        if shape.post_warm_s is None:
            continue
        ratio = shape.post_warm_ratio
        if ratio is None:
            checks.append(
                GateCheck(name=name, passed=True, threshold=configured, detail="no steady latency to compare")
            )
            continue
        baseline = shape.post_warm_baseline
        limit = ratio_limit(configured, baseline)
        passed = ratio <= limit or shape.post_warm_s < floor_s
        detail = ""
        if not passed:
            # A prompt shape's latencies are times to first token.
            what = "first token of the first request" if shape.prompt is not None else "first request"
            detail = (
                f"shape {shape.name}: {what} after warmup took {shape.post_warm_s * 1000:.1f} ms, "
                f"{ratio:.1f}x its steady p50 (limit {limit:.3g}x): still cold"
            )
            if baseline is not None and baseline.p50_s and baseline.max_s:
                detail += (
                    f" (steady: {baseline.count} serial requests after it, "
                    f"p50 {baseline.p50_s * 1000:.1f} ms, max {baseline.max_s * 1000:.1f} ms)"
                )
        checks.append(GateCheck(name=name, passed=passed, value=ratio, threshold=limit, detail=detail))
    return checks


def memory_checks(config: Config, memory: MemoryReport | None) -> list[GateCheck]:
    if memory is None or memory.samples == 0:
        return []
    checks = []
    peak = memory.judged_peak_bytes
    if memory.limit_bytes is not None and peak is not None:
        headroom = config.memory.headroom_fraction
        allowed = memory.limit_bytes * (1 - headroom)
        fraction = peak / memory.limit_bytes
        passed = peak <= allowed
        measure = "PSS" if memory.peak_pss_bytes else "RSS"
        detail = (
            ""
            if passed
            else f"server peak memory {peak / MIB:.0f} MiB ({measure}) is {fraction:.0%} of the "
            f"{memory.limit_bytes / MIB:.0f} MiB limit; {headroom:.0%} headroom required"
        )
        checks.append(
            GateCheck(name="memory", passed=passed, value=fraction, threshold=1 - headroom, detail=detail)
        )
    for gpu in memory.gpus:
        if gpu.total_bytes <= 0:
            continue
        headroom = config.memory.gpu_headroom_fraction
        fraction = gpu.peak_used_bytes / gpu.total_bytes
        passed = fraction <= 1 - headroom
        detail = (
            ""
            if passed
            else f"GPU {gpu.index} peak memory {gpu.peak_used_bytes / MIB:.0f} MiB is {fraction:.0%} of "
            f"{gpu.total_bytes / MIB:.0f} MiB; {headroom:.0%} headroom required"
        )
        checks.append(
            GateCheck(
                name=f"gpu_memory[{gpu.index}]",
                passed=passed,
                value=fraction,
                threshold=1 - headroom,
                detail=detail,
            )
        )
    return checks


def concurrency_checks(
    config: Config, shapes: Sequence[ShapeReport], concurrency: int | None
) -> list[GateCheck]:
    limit = config.gate.max_mismatches
    checks = []
    for shape in shapes:
        report = shape.concurrency_check
        if report is None or report.skipped:
            continue
        passed = report.mismatches <= limit
        under = f" at concurrency {concurrency}" if concurrency else ""
        detail = (
            ""
            if passed
            else f"shape {shape.name}: the server is not safe under concurrency: {report.mismatches} of "
            f"{report.checked} answers{under} differed from the answers to the same inputs sent one at a "
            f"time (first: {report.first_mismatch})"
        )
        if passed and report.checked == 0:
            detail = "no answers were checked (too few load-test requests)"
        checks.append(
            GateCheck(
                name=f"concurrency[{shape.name}]",
                passed=passed,
                value=report.mismatches,
                threshold=limit,
                detail=detail,
            )
        )
    return checks


def verdict(checks: Sequence[GateCheck]) -> GateVerdict:
    failed = [c for c in checks if not c.passed]
    if not failed:
        return GateVerdict(passed=True, checks=list(checks), reason=f"all {len(checks)} checks passed")
    shown = [c.detail or c.name for c in failed[:REASON_CHECKS]]
    more = f" (and {len(failed) - REASON_CHECKS} more)" if len(failed) > REASON_CHECKS else ""
    return GateVerdict(passed=False, checks=list(checks), reason="; ".join(shown) + more)
