"""The engine: warm every shape, load-test, check the first request after warmup, measure memory,
and decide the gate. `Engine.prove` returns the report; the lifecycle (run.py) acts on it.

Order of one attempt:
  resolve shapes (`shapes: auto` reads the model's metadata) -> build every payload once, refusing
  any over the byte budget before anything is sent -> warm the shapes smallest first (with the
  warmup concurrency, so every lazily initialised worker is reached), recording golden answers
  for the concurrency check -> load test (closed or open loop) -> one post-warm request per
  shape -> gate. The server's process tree is sampled for memory throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import psutil

from warmgate.config import Config, Shape
from warmgate.entrypoint.engine import gate
from warmgate.entrypoint.engine.consistency import ShapeCheck, compare_outputs
from warmgate.entrypoint.engine.loadgen import LoadSamples, Target, closed_loop, open_loop, weighted_schedule
from warmgate.entrypoint.engine.memory import (
    GpuReader,
    MemorySampler,
    Nvml,
    cgroup_memory_limit,
    memory_report,
)
from warmgate.entrypoint.engine.payloads import PayloadError, build_inputs, estimated_bytes, varies_by_variant
from warmgate.entrypoint.engine.stats import is_stable, latency_stats
from warmgate.entrypoint.report import format_report
from warmgate.protocols import (
    Adapter,
    InvalidResponse,
    MetadataError,
    Outputs,
    PreparedRequest,
    Result,
    TemplateError,
    make_adapter,
    send,
    validate,
)
from warmgate.protocols.base import CONNECTION
from warmgate.state import (
    ConcurrencyCheckReport,
    GateCheck,
    GateVerdict,
    LoadTestReport,
    MemoryReport,
    Phase,
    Report,
    ShapeReport,
    StateWriter,
)

log = logging.getLogger("warmgate.engine")

MIB = 1024 * 1024
# Seed of the draw that picks which load-test requests carry concurrency-check inputs.
CHECK_SEED = 8


@dataclass(frozen=True)
class Tuning:
    """Knobs that are not configuration but that tests shrink."""

    # status.json is rewritten (with an fsync) at most this often during a phase.
    progress_interval_s: float = 0.5
    # The log gets a progress line at most this often within one long shape or load test.
    log_interval_s: float = 10.0
    # After a connection failure with the server process gone, how long to wait for the
    # supervisor to reap it, so the run ends with the server's exit code, not a gate failure.
    server_exit_wait_s: float = 5.0
    # ... and with the server process apparently alive (it may be exiting right now).
    exit_grace_s: float = 0.5


class ServerGone(Exception):
    """The server exited mid-proof; the lifecycle reports its exit code instead of a verdict."""


class Failure(Exception):
    """Ends an attempt early with one failed gate check."""

    def __init__(self, check: GateCheck) -> None:
        super().__init__(check.detail)
        self.check = check


@dataclass
class Plan:
    """One shape, ready to send: its payloads were built once, here."""

    shape: Shape
    request: PreparedRequest
    report: ShapeReport
    # Concurrency check: requests with distinct deterministic inputs and their golden answers.
    check_requests: list[PreparedRequest] = field(default_factory=list)
    check: ShapeCheck | None = None
    check_skipped: str = ""
    steady: list[float] = field(default_factory=list)


@dataclass
class WarmTally:
    """Requests sent so far in the warming phase, for progress."""

    total: int
    started: float
    done: int = 0


class Progress:
    """Throttled progress to status.json and the log."""

    def __init__(self, state: StateWriter, tuning: Tuning, clock: Callable[[], float]) -> None:
        self.state = state
        self.tuning = tuning
        self.clock = clock
        self._last_status = -float("inf")
        self._last_log = clock()

    def update(self, done: int, total: int, detail: str, *, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_status >= self.tuning.progress_interval_s:
            self._last_status = now
            self.state.set_progress(done, total, detail)
        if now - self._last_log >= self.tuning.log_interval_s:
            self._last_log = now
            log.info("%s", detail)


class Engine:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        state: StateWriter,
        *,
        server_pid: int | None = None,
        server_exited: asyncio.Event | None = None,
        phases: dict[str, float] | None = None,
        tuning: Tuning | None = None,
        gpu_reader: GpuReader | None = None,
        memory_limit: Callable[[], tuple[int | None, str]] = cgroup_memory_limit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.session = session
        self.state = state
        self.server_pid = server_pid
        self.server_exited = server_exited
        self.phases = phases if phases is not None else {}
        self.tuning = tuning or Tuning()
        self.gpu_reader = gpu_reader
        self.memory_limit = memory_limit
        self.clock = clock
        self.adapter: Adapter = make_adapter(config.server)
        self.timeout = aiohttp.ClientTimeout(total=config.server.request_timeout_s)
        self.progress = Progress(state, self.tuning, clock)
        # Plans built by `prepare` while the server loaded, used by the first attempt only (an
        # attempt fills its plans with latencies); or the Failure building them raised.
        self._prepared: list[Plan] | Failure | None = None

    @property
    def warmup_concurrency(self) -> int:
        return self.config.warmup.concurrency or self.config.server.workers or 1

    # ---- attempts ----------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Build every payload before the server is up, when the shapes do not come from it."""
        if self.config.shapes == "auto":
            return
        try:
            self._prepared = await asyncio.to_thread(self._plan_static, list(self.config.shapes))
        except Failure as failure:
            self._prepared = failure

    async def prove(self) -> Report:
        policy = self.config.policy
        attempts = 1 + (policy.retries if policy.on_failure == "retry" else 0)
        nvml: Nvml | None = None
        if self.gpu_reader is None:
            nvml = Nvml()
            self.gpu_reader = nvml.read
        try:
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    self.state.update(attempt=attempt)
                report = await self.attempt(attempt)
                if report.gate.passed or attempt == attempts:
                    self._log_summary(report, "gate passed" if report.gate.passed else "gate failed")
                    return report
                self._log_summary(
                    report,
                    f"attempt {attempt} of {attempts} failed; warming again (policy retry)",
                    logging.WARNING,
                )
            raise AssertionError("unreachable")
        finally:
            if nvml is not None:
                nvml.close()

    async def attempt(self, attempt: int) -> Report:
        checks: list[GateCheck] = []
        plans: list[Plan] = []
        load: LoadTestReport | None = None
        limit, source = self._limit()
        sampler = MemorySampler(self.server_pid, self.config.memory.sample_interval_s, self.gpu_reader)
        try:
            async with sampler.running():
                plans = await self._take_prepared_plans() or await self._plan()
                if not plans:
                    log.warning("no shapes configured: readiness rests on the server's health alone")
                else:
                    await self._warm_all(plans, checks)
                    if self.config.load_test.enabled:
                        load = await self._load_test(plans)
                    await self._post_warm(plans, checks)
        except Failure as failure:
            checks.append(failure.check)
        memory = memory_report(sampler.peaks, limit, source, self.config.memory.headroom_fraction)
        shapes = [self._finish_shape(plan, load) for plan in plans]
        checks += gate.load_checks(self.config, load)
        checks += gate.ratio_checks(self.config, shapes)
        checks += gate.memory_checks(self.config, memory)
        checks += gate.concurrency_checks(self.config, shapes, load.concurrency if load else None)
        verdict = gate.verdict(checks)
        if not plans and verdict.passed:
            verdict = GateVerdict(
                passed=True,
                checks=verdict.checks,
                reason="no shapes configured: readiness rests on health alone",
            )
        return self._report(attempt, shapes, load, memory, verdict)

    def _limit(self) -> tuple[int | None, str]:
        if self.config.memory.limit_bytes is not None:
            return self.config.memory.limit_bytes, "config memory.limit_bytes"
        return self.memory_limit()

    def _report(
        self,
        attempt: int,
        shapes: list[ShapeReport],
        load: LoadTestReport | None,
        memory: MemoryReport,
        verdict: GateVerdict,
    ) -> Report:
        server = self.config.server
        return Report(
            instance_id=self.state.instance_id,
            created_at=time.time(),
            server_url=server.url,
            protocol=server.protocol,
            model=server.model,
            attempts=attempt,
            phases=dict(self.phases),
            shapes=shapes,
            load_test=load,
            memory=memory,
            gate=verdict,
        )

    def _log_summary(self, report: Report, headline: str, level: int | None = None) -> None:
        if level is None:
            level = logging.INFO if report.gate.passed else logging.ERROR
        log.log(level, "%s:\n%s", headline, format_report(report))

    # ---- shapes and payloads ---------------------------------------------------------------

    async def _plan(self) -> list[Plan]:
        config = self.config
        if config.shapes == "auto":
            try:
                shapes = await self.adapter.discover_shapes(
                    self.session, config.auto_shapes, config.server.request_timeout_s
                )
            except MetadataError as exc:
                await self._wait_if_server_gone()
                raise Failure(GateCheck(name="shapes", passed=False, detail=f"shapes: auto: {exc}")) from None
            log.info("shapes from model metadata: %s", ", ".join(s.name for s in shapes))
        else:
            shapes = list(config.shapes)
        return self._plan_static(shapes)

    async def _take_prepared_plans(self) -> list[Plan]:
        prepared, self._prepared = self._prepared, None
        if isinstance(prepared, Failure):
            raise prepared
        return prepared or []

    def _plan_static(self, shapes: list[Shape]) -> list[Plan]:
        budget = self.config.warmup.max_payload_bytes
        # Refuse oversized shapes before building (let alone sending) anything: smallest first
        # also means an oversized shape would fail last, but one that cannot fit fails now.
        for shape in shapes:
            estimate = estimated_bytes(shape)
            if estimate > budget:
                raise Failure(_payload_refused(shape, estimate, budget, "estimated"))
        return [self._plan_shape(shape, budget) for shape in sorted(shapes, key=estimated_bytes)]

    def _plan_shape(self, shape: Shape, budget: int) -> Plan:
        try:
            request = self.adapter.build(build_inputs(shape), shape.batch_size)
        except (PayloadError, TemplateError) as exc:
            raise Failure(GateCheck(name=f"payload[{shape.name}]", passed=False, detail=str(exc))) from None
        if request.size > budget:
            raise Failure(_payload_refused(shape, request.size, budget, "serialised"))
        plan = Plan(
            shape=shape,
            request=request,
            report=ShapeReport(name=shape.name, batch_size=shape.batch_size, payload_bytes=request.size),
        )
        check = self.config.concurrency_check
        if not check.enabled:
            plan.check_skipped = "concurrency_check.enabled is false"
        elif not shape.compare:
            plan.check_skipped = "compare: false on this shape (non-deterministic model)"
        elif not self.adapter.comparable:
            plan.check_skipped = "protocol http without server.http.output_fields"
        elif not self.config.load_test.enabled:
            plan.check_skipped = "the load test is disabled"
        else:
            # Variants cost memory (one body each) and warmup time (two requests each).
            variants = check.variants if varies_by_variant(shape) else 1
            variants = max(1, min(variants, budget // max(1, request.size)))
            plan.check = ShapeCheck(shape.name, check.rtol, check.atol)
            try:
                plan.check_requests = [request] + [
                    self.adapter.build(build_inputs(shape, variant), shape.batch_size)
                    for variant in range(1, variants)
                ]
            except (PayloadError, TemplateError) as exc:
                raise Failure(
                    GateCheck(name=f"payload[{shape.name}]", passed=False, detail=str(exc))
                ) from None
        return plan

    # ---- warmup ------------------------------------------------------------------------------

    async def _warm_all(self, plans: list[Plan], checks: list[GateCheck]) -> None:
        concurrency = self.warmup_concurrency
        counts = [max(plan.shape.count, concurrency) for plan in plans]
        tally = WarmTally(
            total=sum(counts) + sum(2 * len(plan.check_requests) for plan in plans), started=self.clock()
        )
        self.state.set_phase(Phase.WARMING, f"warming {len(plans)} shapes")
        log.info(
            "warming %d shapes smallest first (%s) with concurrency %d",
            len(plans),
            ", ".join(p.shape.name for p in plans),
            concurrency,
        )
        try:
            for position, (plan, count) in enumerate(zip(plans, counts, strict=True), start=1):
                prefix = f"shape {plan.shape.name} ({position}/{len(plans)})"
                await self._warm_shape(plan, count, prefix, tally)
                checks.append(GateCheck(name=f"warmup[{plan.shape.name}]", passed=True))
                await self._record_golden(plan, prefix, tally, checks)
        finally:
            self._add_phase(Phase.WARMING.value, self.clock() - tally.started)

    async def _warm_shape(self, plan: Plan, count: int, prefix: str, tally: WarmTally) -> None:
        """`count` requests in waves of the warmup concurrency (then more until stable, if asked).
        The first wave holds the cold requests: one per worker when there are several."""
        shape, report = plan.shape, plan.report
        shape_started = self.clock()
        sent = 0
        first: list[float] = []
        while wave := self._next_wave(plan, sent, count, shape_started):
            results = await asyncio.gather(*(self._call(plan.request) for _ in range(wave)))
            report.requests += len(results)
            failed = [r for r in results if not r.ok]
            report.errors += len(failed)
            if failed:
                await self._fail_shape(plan, f"warmup[{shape.name}]", failed[0].message, failed[0])
            latencies = [r.latency_s for r in results]
            if sent == 0:
                first = latencies
            else:
                plan.steady.extend(latencies)
            sent += wave
            tally.done += wave
            self.progress.update(
                tally.done,
                tally.total,
                f"{prefix}: request {sent}/{count}, {self.clock() - tally.started:.1f}s elapsed",
            )
        report.first_s = max(first)
        report.steady = latency_stats(plan.steady)
        if report.steady.p50_s:
            report.first_to_steady_ratio = report.first_s / report.steady.p50_s
        log.info(
            "warmed %s: %d requests, first %s, steady p50 %s%s%s",
            prefix,
            sent,
            _ms(report.first_s),
            _ms(report.steady.p50_s),
            f" ({report.first_to_steady_ratio:.1f}x)" if report.first_to_steady_ratio else "",
            "" if report.stable is None else (", stable" if report.stable else ", NOT stable"),
        )
        self.progress.update(tally.done, tally.total, f"{prefix}: warmed", force=True)

    def _next_wave(self, plan: Plan, sent: int, count: int, shape_started: float) -> int:
        """How many requests to send together next; 0 when the shape is warm."""
        concurrency = self.warmup_concurrency
        if sent < count:
            return min(concurrency, count - sent)
        stability = plan.shape.until_stable or self.config.warmup.until_stable
        if not stability.enabled:
            return 0
        if is_stable(plan.steady, stability.window, stability.tolerance):
            plan.report.stable = True
            return 0
        if sent >= stability.max_count or self.clock() - shape_started >= stability.max_seconds:
            plan.report.stable = False
            log.warning(
                "shape %s: latency not stable within %d requests / %gs (window %d, tolerance %g)",
                plan.shape.name,
                stability.max_count,
                stability.max_seconds,
                stability.window,
                stability.tolerance,
            )
            return 0
        return min(concurrency, stability.max_count - sent)

    async def _call(self, request: PreparedRequest) -> Result:
        """One validated request (the answer must carry outputs)."""
        result, _outputs = validate(self.adapter, await send(self.session, request, self.timeout, self.clock))
        return result

    async def _call_outputs(self, request: PreparedRequest) -> tuple[Result, Outputs | None]:
        return validate(self.adapter, await send(self.session, request, self.timeout, self.clock))

    async def _fail_shape(self, plan: Plan, check: str, message: str, result: Result | None = None) -> None:
        detail = f"shape {plan.shape.name}: {message}"
        plan.report.error = detail
        if result is not None and result.kind == CONNECTION:
            await self._wait_if_server_gone()
        raise Failure(GateCheck(name=check, passed=False, detail=detail))

    async def _wait_if_server_gone(self) -> None:
        """A connection failure because the server died is the server's exit, not a gate verdict.

        The kernel closes a dying process's sockets before it becomes a zombie, so the failure
        can arrive before the process looks dead: wait a moment for the supervisor to reap it,
        longer when it already looks gone. If it was reaped, raise ServerGone: run.py prefers the
        server's exit and ends with its exit code."""
        if self.server_pid is None or self.server_exited is None:
            return
        wait = self.tuning.server_exit_wait_s if not _alive(self.server_pid) else self.tuning.exit_grace_s
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.server_exited.wait(), wait)
        if self.server_exited.is_set():
            raise ServerGone(f"server process {self.server_pid} exited")

    # ---- concurrency check: golden answers -------------------------------------------------

    async def _record_golden(
        self, plan: Plan, prefix: str, tally: WarmTally, checks: list[GateCheck]
    ) -> None:
        """Each check input twice, one request at a time: the first answer is the golden one, the
        second proves the model answers the same input the same way when nothing overlaps (else it
        is non-deterministic and must opt out, rather than be called unsafe under concurrency)."""
        check = plan.check
        if check is None:
            return
        name = plan.shape.name
        for variant, request in enumerate(plan.check_requests):
            answers: list[Outputs] = []
            for _ in range(2):
                result, outputs = await self._call_outputs(request)
                plan.report.requests += 1
                if outputs is None:
                    plan.report.errors += 1
                    await self._fail_shape(
                        plan, f"warmup[{name}]", f"check input {variant}: {result.message}", result
                    )
                assert outputs is not None
                answers.append(outputs)
                tally.done += 1
            comparison = compare_outputs(answers[0], answers[1], check.rtol, check.atol)
            if not comparison.matched:
                plan.check = None
                plan.check_skipped = "not deterministic"
                detail = (
                    f"shape {name}: the same input sent twice, one request at a time, got different answers "
                    f"({comparison.detail}): the model is not deterministic; set `compare: false` on this "
                    f"shape to skip the concurrency check"
                )
                checks.append(GateCheck(name=f"concurrency[{name}]", passed=False, detail=detail))
                log.error("%s", detail)
                return
            check.golden.append(answers[0])
            self.progress.update(
                tally.done,
                tally.total,
                f"{prefix}: recorded check answer {variant + 1}/{len(plan.check_requests)}",
            )

    # ---- load test ---------------------------------------------------------------------------

    async def _load_test(self, plans: list[Plan]) -> LoadTestReport | None:
        config = self.config.load_test
        weights = [plan.shape.weight for plan in plans]
        if sum(weights) <= 0:
            log.warning("load test skipped: every shape has weight 0")
            return None
        targets, schedule = self._load_schedule(plans, weights)
        self.state.set_phase(Phase.LOAD_TESTING, f"{config.mode} loop for {config.duration_s:g}s")
        how = (
            f"closed loop, concurrency {config.concurrency}"
            if config.mode == "closed"
            else f"open loop, {config.rate:g} req/s"
        )
        log.info("load test: %s, %gs", how, config.duration_s)

        def inspect(index: int, target: Target, body: bytes) -> None:
            check = plans[target.label].check
            if check is None:
                return
            try:
                outputs = self.adapter.parse(body)
            except InvalidResponse as exc:
                check.record_failure(index, target.variant, str(exc))
                return
            check.check(index, target.variant, outputs)

        samples = LoadSamples()
        ticker = asyncio.create_task(self._load_ticker(samples, config.duration_s))
        started = self.clock()
        try:
            generator = (
                functools.partial(closed_loop, concurrency=config.concurrency)
                if config.mode == "closed"
                else functools.partial(open_loop, rate=config.rate)
            )
            await generator(
                self.session,
                targets,
                schedule,
                duration_s=config.duration_s,
                timeout=self.timeout,
                max_requests=config.max_requests,
                inspect=inspect,
                clock=self.clock,
                samples=samples,
            )
        finally:
            ticker.cancel()
            self._add_phase(Phase.LOAD_TESTING.value, self.clock() - started)
        report = self._load_report(plans, samples)
        errors = sum(report.errors.values())
        log.info(
            "load test: %d requests, %.1f req/s, p50 %s p95 %s p99 %s, %d errors",
            report.requests,
            report.throughput_rps,
            _ms(report.latency.p50_s),
            _ms(report.latency.p95_s),
            _ms(report.latency.p99_s),
            errors,
        )
        if report.errors.get(CONNECTION):
            await self._wait_if_server_gone()
        return report

    def _load_schedule(self, plans: list[Plan], weights: list[float]) -> tuple[list[Target], list[int]]:
        """Targets (one per shape, plus one per check input) and the cycled order to send them in:
        shapes by weight, and a `fraction` of the requests of a checked shape its check inputs."""
        targets = [Target(plan.request, label) for label, plan in enumerate(plans)]
        check_targets: list[list[int]] = []
        for label, plan in enumerate(plans):
            indices = []
            if plan.check is not None and plan.check.golden:
                for variant, request in enumerate(plan.check_requests[: len(plan.check.golden)]):
                    indices.append(len(targets))
                    targets.append(Target(request, label, variant))
            check_targets.append(indices)
        fraction = self.config.concurrency_check.fraction
        rotation = [0] * len(plans)
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

    async def _load_ticker(self, samples: LoadSamples, duration_s: float) -> None:
        started = self.clock()
        while True:
            await asyncio.sleep(self.tuning.progress_interval_s)
            elapsed = self.clock() - started
            errors = len(samples) - samples.successes()
            self.progress.update(
                int(min(elapsed, duration_s)),
                int(duration_s),
                f"load test: {elapsed:.1f}s of {duration_s:g}s, {len(samples)} requests, {errors} errors",
            )

    def _load_report(self, plans: list[Plan], samples: LoadSamples) -> LoadTestReport:
        config = self.config.load_test
        ok_latencies: list[float] = []
        per_label: list[list[float]] = [[] for _ in plans]
        errors: dict[str, int] = {}
        per_shape_errors: dict[str, dict[str, int]] = {}
        for label, latency, kind in zip(samples.labels, samples.latencies, samples.kinds, strict=True):
            if kind:
                errors[kind] = errors.get(kind, 0) + 1
                shape_errors = per_shape_errors.setdefault(plans[label].shape.name, {})
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
                plan.shape.name: latency_stats(per_label[label])
                for label, plan in enumerate(plans)
                if per_label[label]
            },
            per_shape_errors=per_shape_errors,
        )

    # ---- post-warm check ---------------------------------------------------------------------

    async def _post_warm(self, plans: list[Plan], checks: list[GateCheck]) -> None:
        """One request per shape after the load test: the latency a user feels once readiness
        flips, compared with the shape's steady p50."""
        self.state.set_phase(Phase.LOAD_TESTING, "post-warm check: one request per shape")
        started = self.clock()
        try:
            for plan in plans:
                result = await self._call(plan.request)
                plan.report.requests += 1
                if not result.ok:
                    plan.report.errors += 1
                    await self._fail_shape(
                        plan, f"post_warm[{plan.shape.name}]", f"post-warm request: {result.message}", result
                    )
                plan.report.post_warm_s = result.latency_s
        finally:
            self._add_phase("post-warm-check", self.clock() - started)

    def _finish_shape(self, plan: Plan, load: LoadTestReport | None) -> ShapeReport:
        report = plan.report
        steady_p50 = report.steady.p50_s
        if steady_p50 is None and load is not None and plan.shape.name in load.per_shape:
            # Warmup had no steady samples (count <= concurrency): the load test's p50 stands in.
            steady_p50 = load.per_shape[plan.shape.name].p50_s
        if report.post_warm_s is not None and steady_p50:
            report.post_warm_ratio = report.post_warm_s / steady_p50
        if plan.check is not None and plan.check.golden:
            report.concurrency_check = plan.check.report()
        elif plan.check_skipped or plan.check is not None:
            report.concurrency_check = ConcurrencyCheckReport(skipped=plan.check_skipped or "not reached")
        return report

    def _add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds


def _payload_refused(shape: Shape, size: int, budget: int, how: str) -> GateCheck:
    return GateCheck(
        name=f"payload[{shape.name}]",
        passed=False,
        value=float(size),
        threshold=float(budget),
        detail=f"shape {shape.name}: payload {size / MIB:.1f} MiB ({how}) exceeds warmup.max_payload_bytes "
        f"{budget / MIB:.1f} MiB; refused before sending",
    )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"
