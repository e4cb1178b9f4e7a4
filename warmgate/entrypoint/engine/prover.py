"""The orchestrator: runs the stages of one attempt, hands what they measured to the gate, and
assembles the report. `Engine.prove` returns it; the lifecycle (run.py) acts on it.

  plan (plan.py) -> warm (warm.py) -> load test (loadtest.py) -> post-warm (postwarm.py)
    -> verdict (gate.py)

The server's process tree is sampled for memory throughout, and its readiness is watched during
warm and load test (readiness.py): lost readiness fails the attempt. A stage that cannot go on raises a
`StageFailure` (evidence.py): the attempt stops there and the gate records it as one failed check.
With `policy.on_failure: retry` a failed attempt runs again from the plan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from warmgate.config import Config
from warmgate.entrypoint.engine import gate
from warmgate.entrypoint.engine.causes import diagnose, fetch_startup
from warmgate.entrypoint.engine.context import Progress, ServerGone, StageContext, Tuning, log
from warmgate.entrypoint.engine.evidence import Evidence, ReadinessLost, ShapeRun, StageFailure
from warmgate.entrypoint.engine.loadtest import load_test
from warmgate.entrypoint.engine.memory import (
    GpuReader,
    MemorySampler,
    Nvml,
    cgroup_memory_limit,
    memory_report,
)
from warmgate.entrypoint.engine.plan import plan, plan_shapes
from warmgate.entrypoint.engine.postwarm import finish_shape, post_warm
from warmgate.entrypoint.engine.readiness import regained, watched
from warmgate.entrypoint.engine.warm import warm
from warmgate.entrypoint.report import format_report
from warmgate.protocols import make_adapter
from warmgate.state import LoadTestReport, Report, StateWriter

__all__ = ["Engine", "ProofSetup", "ServerGone", "Tuning", "make_prover"]


@dataclass(frozen=True)
class ProofSetup:
    """What the lifecycle hands the engine, built once in run.py after the server is spawned."""

    config: Config
    session: aiohttp.ClientSession
    state: StateWriter
    # Phase name -> seconds; the lifecycle adds waiting-for-server, the stages the rest.
    phases: dict[str, float]
    server_pid: int | None = None
    # Set by the supervisor when the server has exited and been reaped.
    server_exited: asyncio.Event | None = None


def make_prover(setup: ProofSetup) -> Engine:
    return Engine(
        setup.config,
        setup.session,
        setup.state,
        server_pid=setup.server_pid,
        server_exited=setup.server_exited,
        phases=setup.phases,
    )


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
        self.gpu_reader = gpu_reader
        self.memory_limit = memory_limit
        tuning = tuning or Tuning()
        self.ctx = StageContext(
            config=config,
            session=session,
            state=state,
            adapter=make_adapter(config.server),
            tuning=tuning,
            clock=clock,
            progress=Progress(state, tuning, clock),
            timeout=aiohttp.ClientTimeout(total=config.server.request_timeout_s),
            phases=phases if phases is not None else {},
            server_pid=server_pid,
            server_exited=server_exited,
        )
        # Shape runs planned by `prepare` while the server loaded, used by the first attempt only
        # (an attempt fills them with measurements); or the failure planning them raised.
        self._prepared: list[ShapeRun] | StageFailure | None = None
        # Whether the last attempt ended because the server stopped saying ready.
        self._stopped_by_readiness = False

    async def prepare(self) -> None:
        """Build every payload before the server is up, when the shapes do not come from it."""
        if self.config.shapes == "auto":
            return
        try:
            self._prepared = await asyncio.to_thread(
                plan_shapes, self.config, self.ctx.adapter, list(self.config.shapes)
            )
        except StageFailure as failure:
            self._prepared = failure

    async def prove(self) -> Report:
        policy = self.config.policy
        attempts = 1 + (policy.retries if policy.on_failure == "retry" else 0)
        nvml: Nvml | None = None
        if self.gpu_reader is None:
            nvml = Nvml()
            self.gpu_reader = nvml.read
        try:
            readiness_lost = False
            for attempt in range(1, attempts + 1):
                if attempt > 1:
                    self.ctx.state.update(attempt=attempt)
                report = await self.attempt(attempt, wait_for_readiness=readiness_lost)
                readiness_lost = self._stopped_by_readiness
                if report.gate.passed or attempt == attempts:
                    self._log_summary(report, "gate passed" if report.gate.passed else "gate failed")
                    if report.gate.passed:
                        for note in report.gate.notes:
                            log.warning("gate passed, but %s", note)
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
            await self.ctx.adapter.aclose()  # its own HTTP/1.1 or gRPC connections, not the session

    async def attempt(self, attempt: int, *, wait_for_readiness: bool = False) -> Report:
        """One attempt; after one that lost readiness, first wait for the server to regain it."""
        ctx = self.ctx
        runs: list[ShapeRun] = []
        load: LoadTestReport | None = None
        stopped_by: StageFailure | None = None
        limit, source = self._limit()
        sampler = MemorySampler(ctx.server_pid, self.config.memory.sample_interval_s, self.gpu_reader)
        try:
            async with sampler.running():
                if wait_for_readiness:
                    await regained(ctx)
                runs = await self._take_prepared() or await plan(ctx)
                if not runs:
                    log.warning("no shapes configured: readiness rests on the server's health alone")
                else:
                    await watched(ctx, "warming", warm(ctx, runs))
                    if self.config.load_test.enabled:
                        load = await watched(ctx, "the load test", load_test(ctx, runs))
                    await post_warm(ctx, runs)
        except StageFailure as failure:
            stopped_by = failure
        self._stopped_by_readiness = isinstance(stopped_by, ReadinessLost)
        memory = memory_report(sampler.peaks, limit, source, self.config.memory.headroom_fraction)
        shapes = [finish_shape(run, load) for run in runs]
        verdict = gate.evaluate(self.config, Evidence(runs, shapes, load, memory, stopped_by))
        server = self.config.server
        # After the verdict: the trace request must not be part of anything measured.
        startup, source = await fetch_startup(ctx.session, server.url)
        return Report(
            instance_id=ctx.state.instance_id,
            created_at=time.time(),
            server_url=server.url,
            protocol=server.protocol,
            model=server.model,
            attempts=attempt,
            phases=dict(ctx.phases),
            shapes=shapes,
            load_test=load,
            memory=memory,
            gate=verdict,
            diagnosis=diagnose(self.config, runs, load, startup, source),
        )

    async def _take_prepared(self) -> list[ShapeRun]:
        prepared, self._prepared = self._prepared, None
        if isinstance(prepared, StageFailure):
            raise prepared
        return prepared or []

    def _limit(self) -> tuple[int | None, str]:
        if self.config.memory.limit_bytes is not None:
            return self.config.memory.limit_bytes, "config memory.limit_bytes"
        return self.memory_limit()

    def _log_summary(self, report: Report, headline: str, level: int | None = None) -> None:
        if level is None:
            level = logging.INFO if report.gate.passed else logging.ERROR
        log.log(level, "%s:\n%s", headline, format_report(report))
