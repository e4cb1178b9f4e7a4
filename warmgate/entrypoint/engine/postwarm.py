"""Stage 4, post-warm check: is every shape warm at the moment readiness would flip?

Per shape, serial requests, each after the same idle gap (`Tuning.post_warm_gap_s`, so none
queues behind work the load test or the previous shape left running): the first is the one
judged, the latency a user feels once readiness flips (a prompt shape's time to first token);
the next `Tuning.post_warm_baseline` are the serial steady state it is compared with, taken the
same way at the same moment, and their spread is the noise the gate sets its limit against
(gate.py `ratio_checks`). A shape with an unpaid one-time cost pays it on the judged request
alone, so it stands out from the baseline after it; a warm shape's first request is one more draw
from the baseline's distribution. When the first looks cold against that baseline (over the
limit the gate will apply, and over `gate.ratio_floor_ms`), `Tuning.post_warm_confirm` more
serial requests measure the noise before anything is judged: noise from elsewhere on the machine
shows in them, an unpaid one-time cost does not (it was paid by the first).
"""

from __future__ import annotations

import asyncio

from warmgate.entrypoint.engine.context import StageContext, judged_latency
from warmgate.entrypoint.engine.evidence import ShapeRun
from warmgate.entrypoint.engine.stats import latency_stats, ratio_limit
from warmgate.state import ConcurrencyCheckReport, LoadTestReport, Phase, ShapeReport

PHASE = "post-warm-check"


async def post_warm(ctx: StageContext, runs: list[ShapeRun]) -> None:
    """Raises `ShapeFailed` when a shape's post-warm request fails."""
    requests = 1 + ctx.tuning.post_warm_baseline
    ctx.state.set_phase(Phase.LOAD_TESTING, f"post-warm check: {requests} serial requests per shape")
    started = ctx.clock()
    try:
        for run in runs:
            latencies = await _serial(ctx, run, requests)
            run.report.post_warm_s, run.post_warm_baseline = latencies[0], latencies[1:]
            if _looks_cold(ctx, latencies[0], run.post_warm_baseline):
                run.post_warm_baseline += await _serial(ctx, run, ctx.tuning.post_warm_confirm)
    finally:
        ctx.add_phase(PHASE, ctx.clock() - started)


async def _serial(ctx: StageContext, run: ShapeRun, count: int) -> list[float]:
    """`count` requests one at a time, each after the idle gap; raises `ShapeFailed` at the
    first failed one."""
    latencies: list[float] = []
    for _ in range(count):
        await asyncio.sleep(ctx.tuning.post_warm_gap_s)
        result = await ctx.call(run.request)
        run.report.requests += 1
        if not result.ok:
            run.report.errors += 1
            await ctx.fail_shape(run, "post_warm", f"post-warm request: {result.message}", result)
        latencies.append(judged_latency(result))
    return latencies


def _looks_cold(ctx: StageContext, first_s: float, baseline: list[float]) -> bool:
    """Whether the gate would refuse this first request against this baseline."""
    gate = ctx.config.gate
    if gate.max_first_to_steady_ratio is None or not baseline or first_s < gate.ratio_floor_ms / 1000:
        return False
    steady = latency_stats(baseline)
    if not steady.p50_s:
        return False
    return first_s / steady.p50_s > ratio_limit(gate.max_first_to_steady_ratio, steady)


def finish_shape(run: ShapeRun, load: LoadTestReport | None) -> ShapeReport:
    """The shape's report with its post-warm ratio and concurrency-check result filled in."""
    report = run.report
    if run.post_warm_baseline:
        report.post_warm_baseline = latency_stats(run.post_warm_baseline)
        steady_p50 = report.post_warm_baseline.p50_s
    else:
        # No baseline (tuned off, or the stage stopped early): warmup's steady p50, else the
        # load test's stands in.
        steady_p50 = report.steady.p50_s
        if steady_p50 is None and load is not None and run.shape.name in load.per_shape:
            steady_p50 = load.per_shape[run.shape.name].p50_s
    if report.post_warm_s is not None and steady_p50:
        report.post_warm_ratio = report.post_warm_s / steady_p50
    if run.check is not None and run.check.golden:
        report.concurrency_check = run.check.report()
    elif run.check_skipped or run.check is not None:
        report.concurrency_check = ConcurrencyCheckReport(skipped=run.check_skipped or "not reached")
    return report
