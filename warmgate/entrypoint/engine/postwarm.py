"""Stage 4, post-warm check: one request per shape after the load test, the latency a user feels
once readiness flips; and each shape's report finished against its steady p50."""

from __future__ import annotations

from warmgate.entrypoint.engine.context import StageContext
from warmgate.entrypoint.engine.evidence import ShapeRun
from warmgate.state import ConcurrencyCheckReport, LoadTestReport, Phase, ShapeReport

PHASE = "post-warm-check"


async def post_warm(ctx: StageContext, runs: list[ShapeRun]) -> None:
    """Raises `ShapeFailed` when a shape's post-warm request fails."""
    ctx.state.set_phase(Phase.LOAD_TESTING, "post-warm check: one request per shape")
    started = ctx.clock()
    try:
        for run in runs:
            result = await ctx.call(run.request)
            run.report.requests += 1
            if not result.ok:
                run.report.errors += 1
                await ctx.fail_shape(run, "post_warm", f"post-warm request: {result.message}", result)
            run.report.post_warm_s = result.latency_s
    finally:
        ctx.add_phase(PHASE, ctx.clock() - started)


def finish_shape(run: ShapeRun, load: LoadTestReport | None) -> ShapeReport:
    """The shape's report with its post-warm ratio and concurrency-check result filled in."""
    report = run.report
    steady_p50 = report.steady.p50_s
    if steady_p50 is None and load is not None and run.shape.name in load.per_shape:
        # Warmup had no steady samples (count <= concurrency): the load test's p50 stands in.
        steady_p50 = load.per_shape[run.shape.name].p50_s
    if report.post_warm_s is not None and steady_p50:
        report.post_warm_ratio = report.post_warm_s / steady_p50
    if run.check is not None and run.check.golden:
        report.concurrency_check = run.check.report()
    elif run.check_skipped or run.check is not None:
        report.concurrency_check = ConcurrencyCheckReport(skipped=run.check_skipped or "not reached")
    return report
