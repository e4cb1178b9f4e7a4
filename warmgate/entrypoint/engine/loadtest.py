"""Stage 3, load test: the warmed shapes mixed by weight, closed or open loop (loadgen.py), with
the concurrency check's golden inputs woven in; measured into a `LoadTestReport` (with, for
prompt shapes, time to first token, inter-token latency and output tokens per second)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np

from warmgate.entrypoint.engine.context import StageContext, log, ms
from warmgate.entrypoint.engine.earlystop import CHECK_INTERVAL_S, EarlyStop
from warmgate.entrypoint.engine.evidence import ShapeRun
from warmgate.entrypoint.engine.loadgen import (
    LoadSamples,
    Target,
    TokenSamples,
    closed_loop,
    open_loop,
    weighted_schedule,
)
from warmgate.entrypoint.engine.stats import latency_stats
from warmgate.protocols import InvalidResponse
from warmgate.protocols.base import CONNECTION, Result
from warmgate.state import LoadTestReport, Phase, TokenStats

# Seed of the draw that picks which load-test requests carry concurrency-check inputs.
CHECK_SEED = 8


async def load_test(ctx: StageContext, runs: list[ShapeRun]) -> LoadTestReport | None:
    """None when there is nothing to send (every weight 0)."""
    config = ctx.config.load_test
    weights = [run.shape.weight for run in runs]
    if sum(weights) <= 0:
        log.warning("load test skipped: every shape has weight 0")
        return None
    targets, schedule = load_schedule(runs, weights, ctx.config.concurrency_check.fraction)
    ctx.state.set_phase(Phase.LOAD_TESTING, f"{config.mode} loop for {config.duration_s:g}s")
    how = (
        f"closed loop, concurrency {config.concurrency}"
        if config.mode == "closed"
        else f"open loop, {config.rate:g} req/s"
    )
    rule = config.early_stop
    log.info(
        "load test: %s, %gs%s",
        how,
        config.duration_s,
        f" at most (early stop after {rule.min_requests} requests and {rule.min_duration_s:g}s once settled)"
        if rule.enabled
        else "",
    )
    samples = LoadSamples()
    streamed = [
        label
        for label, run in enumerate(runs)
        if run.shape.prompt is not None and run.shape.prompt.stream and run.shape.weight > 0
    ]
    early_stop = EarlyStop.for_schedule(ctx.config, samples, streamed, targets, schedule)

    def inspect(index: int, target: Target, result: Result) -> None:
        check = runs[target.label].check
        if check is None:
            return
        early_stop.record_comparison(target.label, target.variant)
        try:
            outputs = ctx.adapter.decode(result.body, target.request.batch_size, result.headers)
        except InvalidResponse as exc:
            check.record_failure(index, target.variant, str(exc))
            return
        check.check(index, target.variant, outputs)

    ticker = asyncio.create_task(_ticker(ctx, samples, config.duration_s))
    started = ctx.clock()
    judge = asyncio.create_task(_judge(ctx, early_stop, started)) if rule.enabled else None
    try:
        generator = (
            functools.partial(closed_loop, concurrency=config.concurrency)
            if config.mode == "closed"
            else functools.partial(open_loop, rate=config.rate)
        )
        await generator(
            ctx.send,
            targets,
            schedule,
            duration_s=config.duration_s,
            max_requests=config.max_requests,
            inspect=inspect,
            clock=ctx.clock,
            samples=samples,
            should_stop=early_stop.should_stop,
        )
    finally:
        ticker.cancel()
        if judge is not None:
            judge.cancel()
        ctx.add_phase(Phase.LOAD_TESTING.value, ctx.clock() - started)
    report = _report(ctx, runs, samples)
    report.stopped = _why_stopped(early_stop, len(samples), config.max_requests)
    report.intervals = dict(early_stop.intervals)
    if rule.enabled:
        log.info(
            "load test stopped: %s after %.2fs; %s", report.stopped, samples.elapsed_s, _describe(report)
        )
    errors = sum(report.errors.values())
    log.info(
        "load test: %d requests, %.1f req/s, p50 %s p95 %s p99 %s, %d errors",
        report.requests,
        report.throughput_rps,
        ms(report.latency.p50_s),
        ms(report.latency.p95_s),
        ms(report.latency.p99_s),
        errors,
    )
    if report.tokens is not None and report.tokens.ttft.count:
        log.info(
            "load test, streamed completions: TTFT p50 %s p95 %s, ITL p50 %s p95 %s, %.1f output tokens/s",
            ms(report.tokens.ttft.p50_s),
            ms(report.tokens.ttft.p95_s),
            ms(report.tokens.itl.p50_s),
            ms(report.tokens.itl.p95_s),
            report.tokens.output_tokens_per_s,
        )
    if report.errors.get(CONNECTION):
        await ctx.wait_if_server_gone()
    return report


def load_schedule(
    runs: list[ShapeRun], weights: list[float], fraction: float
) -> tuple[list[Target], list[int]]:
    """Targets (one per shape, plus one per check input) and the cycled order to send them in:
    shapes by weight, and a `fraction` of the requests of a checked shape its check inputs."""
    targets = [Target(run.request, label) for label, run in enumerate(runs)]
    check_targets: list[list[int]] = []
    for label, run in enumerate(runs):
        indices = []
        if run.check is not None and run.check.golden:
            for variant, request in enumerate(run.check_requests[: len(run.check.golden)]):
                indices.append(len(targets))
                targets.append(Target(request, label, variant))
        check_targets.append(indices)
    rotation = [0] * len(runs)
    schedule = []
    mix = weighted_schedule(weights)
    # Check slots are drawn at random (seeded), not every 1/fraction-th slot: a closed loop
    # whose concurrency equals 1/fraction sends its requests in lockstep waves, and a regular
    # pattern would always put the check request last in its wave, the one request whose
    # answer a shared buffer does not overwrite.
    is_check = np.random.default_rng(CHECK_SEED).random(len(mix)) < fraction
    for slot, label in enumerate(mix):
        if is_check[slot] and check_targets[label]:
            options = check_targets[label]
            schedule.append(options[rotation[label] % len(options)])
            rotation[label] += 1
        else:
            schedule.append(label)
    return targets, schedule


async def _judge(ctx: StageContext, early_stop: EarlyStop, started: float) -> None:
    """Early stopping's timer: judges the samples every CHECK_INTERVAL_S until they settle."""
    while not early_stop.check(ctx.clock() - started):
        await asyncio.sleep(CHECK_INTERVAL_S)


def _why_stopped(early_stop: EarlyStop, requests: int, max_requests: int | None) -> str:
    if early_stop.converged:
        return "converged"
    if max_requests is not None and requests >= max_requests:
        return "max_requests"
    return "duration"


def _describe(report: LoadTestReport) -> str:
    """The intervals early stopping last judged, e.g. "p95 12.1 ms [11.8, 12.5] of 640"."""
    if not report.intervals:
        return "too few samples to judge"
    parts = []
    for name, interval in report.intervals.items():
        parts.append(
            f"{name} {ms(interval.estimate_s)} [{ms(interval.lower_s)}, {ms(interval.upper_s)}] "
            f"of {interval.count}"
        )
    return ", ".join(parts)


async def _ticker(ctx: StageContext, samples: LoadSamples, duration_s: float) -> None:
    started = ctx.clock()
    while True:
        await asyncio.sleep(ctx.tuning.progress_interval_s)
        elapsed = ctx.clock() - started
        errors = len(samples) - samples.successes()
        ctx.progress.update(
            int(min(elapsed, duration_s)),
            int(duration_s),
            f"load test: {elapsed:.1f}s of {duration_s:g}s, {len(samples)} requests, {errors} errors",
        )


def _report(ctx: StageContext, runs: list[ShapeRun], samples: LoadSamples) -> LoadTestReport:
    config = ctx.config.load_test
    ok_latencies: list[float] = []
    per_label: list[list[float]] = [[] for _ in runs]
    errors: dict[str, int] = {}
    per_shape_errors: dict[str, dict[str, int]] = {}
    for label, latency, kind in zip(samples.labels, samples.latencies, samples.kinds, strict=True):
        if kind:
            errors[kind] = errors.get(kind, 0) + 1
            shape_errors = per_shape_errors.setdefault(runs[label].shape.name, {})
            shape_errors[kind] = shape_errors.get(kind, 0) + 1
        else:
            ok_latencies.append(latency)
            per_label[label].append(latency)
    elapsed = samples.elapsed_s
    return LoadTestReport(
        mode=config.mode,
        duration_s=elapsed,
        concurrency=config.concurrency if config.mode == "closed" else None,
        target_rate=config.rate if config.mode == "open" else None,
        requests=len(samples),
        errors=errors,
        throughput_rps=len(ok_latencies) / elapsed if elapsed > 0 else 0.0,
        latency=latency_stats(ok_latencies),
        per_shape={
            run.shape.name: latency_stats(per_label[label])
            for label, run in enumerate(runs)
            if per_label[label]
        },
        per_shape_errors=per_shape_errors,
        **_token_report(runs, samples),
    )


def _token_report(runs: list[ShapeRun], samples: LoadSamples) -> dict[str, Any]:
    """For prompt shapes: TTFT, ITL and output tokens per shape, and over the streamed ones (what
    the gate's TTFT and ITL SLOs judge)."""
    prompts = [(label, run) for label, run in enumerate(runs) if run.shape.prompt is not None]
    if not prompts:
        return {}
    elapsed = samples.elapsed_s
    streamed = TokenSamples()
    per_shape: dict[str, TokenStats] = {}
    for label, run in prompts:
        measured = samples.tokens.get(label)
        if measured is None:
            continue
        per_shape[run.shape.name] = token_stats(measured, elapsed)
        if run.shape.prompt is not None and run.shape.prompt.stream:
            streamed.ttfts.extend(measured.ttfts)
            streamed.gaps.extend(measured.gaps)
            streamed.output_tokens += measured.output_tokens
    return {"tokens": token_stats(streamed, elapsed), "per_shape_tokens": per_shape}


def token_stats(samples: TokenSamples, elapsed_s: float) -> TokenStats:
    return TokenStats(
        ttft=latency_stats(np.frombuffer(samples.ttfts, dtype=np.float64)),
        itl=latency_stats(np.frombuffer(samples.gaps, dtype=np.float64)),
        output_tokens=samples.output_tokens,
        output_tokens_per_s=samples.output_tokens / elapsed_s if elapsed_s > 0 else 0.0,
    )
