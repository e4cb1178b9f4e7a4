"""The sidecar's warm cycles: wait for the server, prove it with the engine of `warmgate run`, watch
it while ready, and start over whenever it is lost.

    waiting-for-server -> warming -> load-testing -> ready --(readiness lost)--> waiting-for-server
                                                 \\-> failed --(backoff)--> waiting-for-server
    any phase --(GET /drain)--> draining --(server gone, or still there after drain.grace_period_s)
                                        --> waiting-for-server

Every phase but ready removes the marker first (StateWriter.set_phase), so readiness fails from
the moment the server is lost until a later cycle passes the gate again. A failed gate never ends
the process: the sidecar does not own the server, so there is nothing to stop or restart; it
stays not ready and warms again after a backoff that doubles up to a ceiling.

One task changes the state: `run`. `drain` (the /drain route) and `stop` (TERM) only record what
happened, write the draining phase at once, and cancel whatever `run` was doing; `run` then
takes the next step from the recorded facts.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from warmgate import exitcodes
from warmgate.config import Config
from warmgate.entrypoint.engine.connections import client_session
from warmgate.entrypoint.engine.context import Tuning
from warmgate.entrypoint.engine.prover import Engine
from warmgate.entrypoint.failclosed import record_best_effort
from warmgate.protocols import Adapter, make_adapter
from warmgate.protocols.health import ServerNeverHealthy, wait_until_healthy
from warmgate.state import Phase, Report, StateError, StateWriter

log = logging.getLogger("warmgate.sidecar")

T = TypeVar("T")

_ENGINE_TUNING = Tuning()


@dataclass(frozen=True)
class SidecarTuning:
    """Knobs that are not configuration but that tests shrink."""

    # While ready, the server's readiness is asked this often, and this many failures in a row
    # mean it is lost: the numbers the engine's own watch uses during warmup and the load test.
    watch_interval_s: float = _ENGINE_TUNING.readiness_interval_s
    watch_failures: int = _ENGINE_TUNING.readiness_failures
    watch_timeout_s: float = _ENGINE_TUNING.readiness_timeout_s
    # After a failed gate: the first wait before warming again, doubled after each failure up to
    # the ceiling. Short enough that a server which only needed longer is soon ready; the
    # ceiling keeps a server that never will from being load-tested back to back.
    first_backoff_s: float = 2.0
    max_backoff_s: float = 120.0
    # The wait for the server logs a line this often, so a long model load is visibly alive.
    wait_log_interval_s: float = 10.0


class _Interrupted(Exception):
    """What `run` was doing was cancelled by a drain or a stop."""


def sidecar_engine_config(config: Config) -> Config:
    """The config the engine runs with here: the server's memory lives in another container, out
    of the sidecar's sight (no pid, another cgroup), so no memory limit is judged against a
    peak that would read 0. GPU memory is still read through NVML."""
    if config.memory.limit_bytes is None:
        return config
    return config.model_copy(update={"memory": config.memory.model_copy(update={"limit_bytes": None})})


def no_memory_limit() -> tuple[int | None, str]:
    return None, "not judged: the server runs in another container"


class Warmer:
    """The probe's companion in `warmgate sidecar` (warmgate.probe.server.Companion)."""

    def __init__(
        self,
        config: Config,
        state: StateWriter,
        *,
        tuning: SidecarTuning | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = sidecar_engine_config(config)
        self.state = state
        self.tuning = tuning or SidecarTuning()
        self.clock = clock
        self.adapter: Adapter = make_adapter(config.server)
        # Warm cycles started since the sidecar started; the status says which one passed.
        self.cycles = 0
        # When the current drain began (None: not draining), and whether TERM arrived.
        self.draining_since: float | None = None
        self.stopping = False
        self._activity: asyncio.Future[Any] | None = None
        # A state directory that failed outside `run` (in drain): `run` exits with it.
        self._state_failure: StateError | None = None

    # ---- called by the /drain route and by the probe server on TERM ----------------------------

    def drain(self) -> float:
        """Fail readiness now (marker removed, phase draining) and return when the quiet period
        ends (clock time). A drain already under way is joined, not restarted."""
        if self.draining_since is None:
            self.draining_since = self.clock()
            quiet = self.config.drain.quiet_period_s
            log.info("drain requested: readiness fails now; the server may be stopped in %gs", quiet)
            message = f"drain requested: quiet period {quiet:g}s"
            # After TERM the state already says the sidecar stops; the hook is only held.
            failure = None if self.stopping else record_best_effort(self.state, Phase.DRAINING, message)
            if failure is not None:
                self._state_failure = failure
            self._interrupt()
        return self.draining_since + self.config.drain.quiet_period_s

    async def stop(self) -> None:
        """TERM: stop warming (requests to a server being stopped only add noise), say so in the
        state, and hold until a drain under way has answered its hook. (A drain that arrives
        after the TERM, within the shutdown delay, is held too: the HTTP server's graceful
        shutdown waits for the handlers in flight.)"""
        self.stopping = True
        self._interrupt()
        if self.draining_since is None:
            record_best_effort(self.state, Phase.DRAINING, "sidecar stopping")
            return
        await asyncio.sleep(max(0.0, self.draining_since + self.config.drain.quiet_period_s - self.clock()))

    def _interrupt(self) -> None:
        if self._activity is not None and not self._activity.done():
            self._activity.cancel()

    # ---- the one task that changes the state -------------------------------------------------

    async def run(self) -> int:
        try:
            async with client_session(self.config) as session:
                return await self._cycles(session)
        except StateError as exc:
            log.error("%s", exc)
            record_best_effort(self.state, Phase.FAILED, str(exc))
            return exitcodes.STATE_DIR_UNUSABLE
        finally:
            if self.stopping:
                record_best_effort(self.state, Phase.STOPPED, "sidecar stopped")
            await self.adapter.aclose()

    async def _cycles(self, session: aiohttp.ClientSession) -> int:
        backoff = self.tuning.first_backoff_s
        while not self.stopping:
            if self._state_failure is not None:
                raise self._state_failure
            try:
                if self.draining_since is not None:
                    if self.state.status.phase is not Phase.DRAINING:
                        # A stage cancelled by the drain may have written its own phase since.
                        self.state.set_phase(Phase.DRAINING, "drain requested")
                    await self._interruptible(self._until_drain_ends(session))
                    continue
                waited_s = await self._interruptible(self._wait_for_server(session))
                self.cycles += 1
                report = await self._interruptible(self._prove(session, waited_s))
                # A drain or TERM that came as the proof ended wins: no await between this check
                # and the marker, so nothing can come between them.
                if self.draining_since is not None or self.stopping:
                    continue
                if self._commit(report):
                    backoff = self.tuning.first_backoff_s
                    lost = await self._interruptible(self._watch(session))
                    if self.draining_since is not None or self.stopping:
                        continue
                    log.warning("server lost: %s; readiness fails until it is warm again", lost)
                    self.state.set_phase(Phase.WAITING_FOR_SERVER, f"server lost: {lost}")
                else:
                    await self._interruptible(asyncio.sleep(backoff))
                    backoff = min(backoff * 2, self.tuning.max_backoff_s)
            except _Interrupted:
                continue
        return exitcodes.OK

    async def _interruptible(self, work: Awaitable[T]) -> T:
        """`work` as the current activity, which `drain` and `stop` may cancel (raising
        _Interrupted here); cancelling `run` itself still cancels `run`."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._activity = task
        try:
            await asyncio.wait({task})
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._activity = None
        if task.cancelled():
            raise _Interrupted
        return task.result()

    def _commit(self, report: Report) -> bool:
        """Write the cycle's outcome: status first, marker last, as `warmgate run` does."""
        cycle = self.cycles
        if report.gate.passed:
            self.state.set_phase(Phase.READY, f"warm cycle {cycle}: {report.gate.reason}")
            try:
                self.state.write_ready(report)
            except OSError as exc:
                raise StateError(f"cannot write {self.state.ready_path}: {exc.strerror or exc}") from None
            log.info("warm cycle %d: gate passed: ready (%s)", cycle, report.gate.reason)
            return True
        backoff = f"warming again after a backoff (cycle {cycle + 1})"
        message = f"warm cycle {cycle}: gate failed: {report.gate.reason}; {backoff}"
        log.error("%s", message)
        self.state.set_phase(Phase.FAILED, message)
        return False

    async def _wait_for_server(self, session: aiohttp.ClientSession) -> float:
        """Until the server says ready, however long that takes: the server's own startup probe
        (aimed at /startupz) decides when it took too long, by restarting it. Returns the wait."""
        self.state.set_phase(Phase.WAITING_FOR_SERVER, f"polling {self.adapter.health_url}")
        started = last_log = self.clock()
        check = functools.partial(self.adapter.check_ready, session)

        def on_poll(polls: int, reason: str | None) -> None:
            nonlocal last_log
            now = self.clock()
            if reason is not None and now - last_log >= self.tuning.wait_log_interval_s:
                last_log = now
                log.info("waiting for server: %.0fs, %d polls, last: %s", now - started, polls, reason)
                self.state.set_progress(0, 0, reason)

        timeout_s = self.config.server.start_timeout_s
        while True:
            try:
                await wait_until_healthy(check, timeout_s, clock=self.clock, on_poll=on_poll)
                break
            except ServerNeverHealthy as exc:
                log.warning("%s; still waiting (server.start_timeout_s is the server's to enforce here)", exc)
        waited_s = self.clock() - started
        log.info("server ready after %.2fs: warm cycle %d starts", waited_s, self.cycles + 1)
        return waited_s

    async def _prove(self, session: aiohttp.ClientSession, waited_s: float) -> Report:
        # As in `warmgate run`'s report: the wait for the server (here: since the sidecar started,
        # or since the server was lost) is the first phase of the timeline.
        phases: dict[str, float] = {Phase.WAITING_FOR_SERVER.value: waited_s}
        if self.state.status.attempt != 1:
            # The engine counts policy retries within one cycle; a new cycle starts at 1.
            self.state.update(attempt=1)
        engine = Engine(self.config, session, self.state, phases=phases, memory_limit=no_memory_limit)
        await engine.prepare()
        return await engine.prove()

    async def _watch(self, session: aiohttp.ClientSession) -> str:
        """While ready: returns the reason once readiness failed `watch_failures` times in a row."""
        failures = 0
        while True:
            await asyncio.sleep(self.tuning.watch_interval_s)
            reason = await self.adapter.check_ready(session, self.tuning.watch_timeout_s)
            failures = 0 if reason is None else failures + 1
            if reason is not None and failures >= self.tuning.watch_failures:
                return reason

    async def _until_drain_ends(self, session: aiohttp.ClientSession) -> None:
        """After a drain the server is expected to stop. Once it is gone the next cycle waits for
        its successor; a server still ready `drain.grace_period_s` after the quiet period was
        never stopped (a restart that did not happen, a stray call), and is warmed again."""
        assert self.draining_since is not None
        drain = self.config.drain
        release_at = self.draining_since + drain.quiet_period_s + drain.grace_period_s
        watch = asyncio.ensure_future(self._watch(session))
        try:
            lost = await asyncio.wait_for(watch, max(0.0, release_at - self.clock()))
            log.info("drained server gone (%s): waiting for its successor", lost)
        except TimeoutError:
            log.warning(
                "the server still answers ready %gs after the drain's quiet period: it was not "
                "stopped, warming it again",
                drain.grace_period_s,
            )
        self.draining_since = None
        self.state.set_phase(Phase.WAITING_FOR_SERVER, "after a drain")
