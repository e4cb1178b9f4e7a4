"""What every stage shares: the config, the client, progress reporting, and how to tell a dead
server from a failing one. Built once per engine; stages take it instead of a dozen arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp
import psutil

from warmgate.config import Config
from warmgate.entrypoint.engine.connections import warmup_concurrency
from warmgate.entrypoint.engine.evidence import ShapeFailed, ShapeRun
from warmgate.protocols import Adapter, Outputs, PreparedRequest, Result, validate
from warmgate.protocols.base import CONNECTION
from warmgate.state import StateWriter

# One logger for all stages: users see the same `warmgate.engine` lines whatever module spoke.
log = logging.getLogger("warmgate.engine")


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
    # During warmup and the load test the server's readiness is asked this often; this many
    # failures in a row (a probe's failureThreshold: one slow answer under load is not a verdict)
    # end the attempt. Each check waits at most readiness_timeout_s.
    readiness_interval_s: float = 0.5
    readiness_failures: int = 2
    readiness_timeout_s: float = 2.0
    # Post-warm check: before each of its requests the server is left idle this long (so none
    # of them queues behind what the load test left running), and after the judged first
    # request this many more give the serial steady state it is compared with.
    post_warm_gap_s: float = 0.02
    post_warm_baseline: int = 5
    # When the first request looks cold against that baseline, this many more serial requests
    # measure the noise before the gate judges: a machine whose steady requests stray as far
    # (another process took the CPU for a while) shows it, a shape with an unpaid one-time cost
    # does not.
    post_warm_confirm: int = 20


class ServerGone(Exception):
    """The server exited mid-proof; the lifecycle reports its exit code instead of a verdict."""


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


@dataclass
class StageContext:
    config: Config
    session: aiohttp.ClientSession
    state: StateWriter
    adapter: Adapter
    tuning: Tuning
    clock: Callable[[], float]
    progress: Progress
    timeout: aiohttp.ClientTimeout
    # Phase name -> seconds, shared with the lifecycle and copied into the report.
    phases: dict[str, float]
    server_pid: int | None = None
    server_exited: asyncio.Event | None = None

    @property
    def warmup_concurrency(self) -> int:
        return warmup_concurrency(self.config)

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    async def call(self, request: PreparedRequest) -> Result:
        """One validated request (the answer must carry outputs)."""
        result, _outputs = await self.call_outputs(request)
        return result

    async def send(self, request: PreparedRequest) -> Result:
        """One request over the protocol's transport, timed with the stage's clock."""
        return await self.adapter.send(self.session, request, self.timeout, self.clock)

    async def call_outputs(self, request: PreparedRequest) -> tuple[Result, Outputs | None]:
        return validate(self.adapter, await self.send(request))

    async def fail_shape(
        self, run: ShapeRun, stage: Literal["warmup", "post_warm"], message: str, result: Result | None = None
    ) -> None:
        """Record the shape's failure and end the attempt (or the run, if the server died)."""
        detail = f"shape {run.shape.name}: {message}"
        run.report.error = detail
        if result is not None and result.kind == CONNECTION:
            await self.wait_if_server_gone()
        raise ShapeFailed(stage, run.shape.name, detail)

    async def wait_if_server_gone(self) -> None:
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


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def judged_latency(result: Result) -> float:
    """What a stage times a request by: its latency, or for an LLM completion its time to first
    token (the wait a user of a streamed answer feels; a non-streamed answer's is its latency)."""
    return result.generation.ttft_s if result.generation is not None else result.latency_s


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"
