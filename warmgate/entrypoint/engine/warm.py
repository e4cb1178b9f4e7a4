"""Stage 2, warm: every shape, smallest first, in waves of the warmup concurrency.

The first wave holds the cold requests: with several lazily initialised workers, concurrent
requests reach different workers, so every worker pays its first-request costs here and not in
the load test. With `until_stable`, waves go on until the latency settles (or a bound is hit).
Right after a shape is warm its concurrency-check inputs are each sent twice, one at a time: the
first answer is the golden one the load test compares against. Prompt shapes (LLM servers) are
calibrated against the server's token count before the first wave (prompts.py), and timed by
their time to first token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from warmgate.entrypoint.engine.consistency import compare_outputs
from warmgate.entrypoint.engine.context import StageContext, judged_latency, log, ms
from warmgate.entrypoint.engine.evidence import ShapeRun
from warmgate.entrypoint.engine.prompts import calibrate
from warmgate.entrypoint.engine.stats import is_stable, latency_stats
from warmgate.protocols import Outputs
from warmgate.protocols.base import WORKER_HEADER
from warmgate.state import Phase


@dataclass
class WarmTally:
    """Requests sent so far in the warming phase, for progress."""

    total: int
    started: float
    done: int = 0


async def warm(ctx: StageContext, runs: list[ShapeRun]) -> None:
    """Warm every shape; raises `ShapeFailed` at the first failed request. Prompt shapes are
    calibrated first (prompts.py): the server must count their prompts before they are sent."""
    await calibrate(ctx, runs)
    concurrency = ctx.warmup_concurrency
    counts = [max(run.shape.count, concurrency) for run in runs]
    tally = WarmTally(
        total=sum(counts) + sum(2 * len(run.check_requests) for run in runs), started=ctx.clock()
    )
    ctx.state.set_phase(Phase.WARMING, f"warming {len(runs)} shapes")
    log.info(
        "warming %d shapes smallest first (%s) with concurrency %d",
        len(runs),
        ", ".join(r.shape.name for r in runs),
        concurrency,
    )
    try:
        for position, (run, count) in enumerate(zip(runs, counts, strict=True), start=1):
            prefix = f"shape {run.shape.name} ({position}/{len(runs)})"
            await _warm_shape(ctx, run, count, prefix, tally)
            run.warmed = True
            await _record_golden(ctx, run, prefix, tally)
    finally:
        ctx.add_phase(Phase.WARMING.value, ctx.clock() - tally.started)


async def _warm_shape(ctx: StageContext, run: ShapeRun, count: int, prefix: str, tally: WarmTally) -> None:
    """`count` requests in waves of the warmup concurrency (then more until stable, if asked).
    The first wave holds the cold requests: one per worker when there are several."""
    report = run.report
    shape_started = ctx.clock()
    sent = 0
    first: list[float] = []
    while wave := _next_wave(ctx, run, sent, count, shape_started):
        results = await asyncio.gather(*(ctx.call(run.request) for _ in range(wave)))
        report.requests += len(results)
        failed = [r for r in results if not r.ok]
        report.errors += len(failed)
        if failed:
            await ctx.fail_shape(run, "warmup", failed[0].message, failed[0])
        latencies = [judged_latency(r) for r in results]
        run.warm_samples.extend(
            (latency, r.headers.get(WORKER_HEADER)) for latency, r in zip(latencies, results, strict=True)
        )
        if sent == 0:
            first = latencies
        else:
            run.steady.extend(latencies)
        sent += wave
        tally.done += wave
        ctx.progress.update(
            tally.done,
            tally.total,
            f"{prefix}: request {sent}/{count}, {ctx.clock() - tally.started:.1f}s elapsed",
        )
    report.first_s = max(first)
    report.steady = latency_stats(run.steady)
    if report.steady.p50_s:
        report.first_to_steady_ratio = report.first_s / report.steady.p50_s
    log.info(
        "warmed %s: %d requests, first %s, steady p50 %s%s%s",
        prefix,
        sent,
        ms(report.first_s),
        ms(report.steady.p50_s),
        f" ({report.first_to_steady_ratio:.1f}x)" if report.first_to_steady_ratio else "",
        "" if report.stable is None else (", stable" if report.stable else ", NOT stable"),
    )
    ctx.progress.update(tally.done, tally.total, f"{prefix}: warmed", force=True)


def _next_wave(ctx: StageContext, run: ShapeRun, sent: int, count: int, shape_started: float) -> int:
    """How many requests to send together next; 0 when the shape is warm."""
    concurrency = ctx.warmup_concurrency
    if sent < count:
        return min(concurrency, count - sent)
    stability = run.shape.until_stable or ctx.config.warmup.until_stable
    if not stability.enabled:
        return 0
    if is_stable(run.steady, stability.window, stability.tolerance):
        run.report.stable = True
        return 0
    if sent >= stability.max_count or ctx.clock() - shape_started >= stability.max_seconds:
        run.report.stable = False
        log.warning(
            "shape %s: latency not stable within %d requests / %gs (window %d, tolerance %g)",
            run.shape.name,
            stability.max_count,
            stability.max_seconds,
            stability.window,
            stability.tolerance,
        )
        return 0
    return min(concurrency, stability.max_count - sent)


async def _record_golden(ctx: StageContext, run: ShapeRun, prefix: str, tally: WarmTally) -> None:
    """Each check input twice, one request at a time: the first answer is the golden one, the
    second proves the model answers the same input the same way when nothing overlaps (else it
    is non-deterministic and must opt out, rather than be called unsafe under concurrency)."""
    check = run.check
    if check is None:
        return
    name = run.shape.name
    for variant, request in enumerate(run.check_requests):
        answers: list[Outputs] = []
        for _ in range(2):
            result, outputs = await ctx.call_outputs(request)
            run.report.requests += 1
            if outputs is None:
                run.report.errors += 1
                await ctx.fail_shape(run, "warmup", f"check input {variant}: {result.message}", result)
            assert outputs is not None
            answers.append(outputs)
            tally.done += 1
        comparison = compare_outputs(answers[0], answers[1], check.rtol, check.atol)
        if not comparison.matched:
            run.check = None
            run.check_skipped = "not deterministic"
            run.nondeterminism = (
                f"shape {name}: the same input sent twice, one request at a time, got different answers "
                f"({comparison.detail}): the model is not deterministic; set `compare: false` on this "
                f"shape to skip the concurrency check"
            )
            log.error("%s", run.nondeterminism)
            return
        check.golden.append(answers[0])
        ctx.progress.update(
            tally.done,
            tally.total,
            f"{prefix}: recorded check answer {variant + 1}/{len(run.check_requests)}",
        )
