"""PID 1 duties: supervise the server in its own process group, forward signals, reap every child.
(Starting it, which happens before the event loop exists, is spawn.py's.)

Signal handlers only record (they put the signal number on a queue); `Supervisor.dispatch` is the
loop that acts on them. As PID 1 (or a child subreaper) every orphaned grandchild is re-parented
to us, so the reaper waits for any pid and reports only the server's status.

Fail closed: the handled signals are blocked from just before the spawn until their handlers are
installed (a TERM in between would otherwise kill warmgate and orphan the server); a dispatch or
reaping task that dies sets `Supervisor.failed` instead of dying silently; and stopping the server
reaps by itself, so it works even when those tasks are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

from warmgate import exitcodes
from warmgate.entrypoint.spawn import (
    HANDLED_SIGNALS,
    KILL_WAIT_S,
    SHUTDOWN_SIGNALS,
    signal_group,
    spawn_process,
    unblock_handled_signals,
)

log = logging.getLogger("warmgate.supervisor")

# Reaping is also polled, in case a SIGCHLD was coalesced while we were busy.
REAP_POLL_INTERVAL_S = 0.5
# After the server itself exits, stragglers in its group get this long before SIGKILL.
STRAGGLER_GRACE_S = 2.0


class ServerProcess:
    """The model server: leader of its own session and process group."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exit_code: int | None = None
        self.exited = asyncio.Event()

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServerProcess:
        return cls(spawn_process(argv, env))

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def record_exit(self, code: int) -> None:
        self.exit_code = code
        self.exited.set()

    def signal_group(self, signum: int) -> bool:
        """Signal the whole process group; False when nobody is left in it."""
        return signal_group(self.pid, signum)

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Supervisor:
    """Owns signal handling and reaping for one server process."""

    def __init__(
        self,
        server: ServerProcess,
        *,
        reap_any: bool,
        on_forward: Callable[[int], None] | None = None,
    ) -> None:
        self.server = server
        self.reap_any = reap_any
        self.signals: asyncio.Queue[int] = asyncio.Queue()
        self.shutdown_requested = asyncio.Event()
        self.shutdown_count = 0
        self.shutdown_signal: int = signal.SIGTERM
        self._on_forward = on_forward
        self._escalate = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Set when a dispatch or reaping task died of an exception (`failure`): signals are then
        # no longer acted on, so the run must fail closed.
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self.signals.put_nowait, signum)
        # A signal blocked by whoever started us (or by block_handled_signals, around the spawn)
        # would wait forever at the door: unblock what we handle, now that it is handled.
        unblock_handled_signals()
        self._tasks = [
            asyncio.create_task(self.dispatch(), name="signal-dispatch"),
            asyncio.create_task(self._poll_reap(), name="reap-poll"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        # The child may have exited before the SIGCHLD handler existed.
        self.reap()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if self.failure is None:
            self.failure = task.exception()
        self.failed.set()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in HANDLED_SIGNALS:
            loop.remove_signal_handler(signum)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task

    async def dispatch(self) -> None:
        while True:
            signum = await self.signals.get()
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum in SHUTDOWN_SIGNALS:
                self.shutdown_count += 1
                if self.shutdown_count == 1:
                    self.shutdown_signal = signum
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    self.shutdown_requested.set()
                else:
                    log.warning("received %s again: escalating", signal.Signals(signum).name)
                    self._escalate.set()
            else:
                log.info("forwarding %s to the server", signal.Signals(signum).name)
                self.server.signal_group(signum)
                if self._on_forward is not None:
                    self._on_forward(signum)

    async def _poll_reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_POLL_INTERVAL_S)
            self.reap()

    def reap(self) -> None:
        """Collect every exited child without blocking; record the server's status."""
        while True:
            try:
                if self.reap_any:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                elif self.server.running:
                    pid, status = os.waitpid(self.server.pid, os.WNOHANG)
                else:
                    return
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.server.pid and self.server.running:
                code = exitcodes.from_wait_status(status)
                log.info("server (pid %d) exited: %s", pid, describe_exit(code))
                self.server.record_exit(code)
            elif pid != self.server.pid:
                log.debug("reaped orphan pid %d", pid)

    async def stop_server(self, signum: int, grace_s: float) -> int:
        """Two-stage stop: forward `signum`, wait `grace_s` (a second shutdown signal cuts it
        short), then SIGKILL the group. Stragglers of the group are stopped too. Returns the
        server's exit code."""
        if self.server.running:
            log.info("sending %s to the server's process group", signal.Signals(signum).name)
            self.server.signal_group(signum)
            if not await self.wait_exit_or_escalation(grace_s):
                why = (
                    "second shutdown signal"
                    if self._escalate.is_set()
                    else f"still running after {grace_s:g}s"
                )
                log.warning("server %s: sending SIGKILL to its process group", why)
                self.server.signal_group(signal.SIGKILL)
                if not await self._wait_exit(KILL_WAIT_S):
                    log.error("server (pid %d) not gone %gs after SIGKILL", self.server.pid, KILL_WAIT_S)
                    self.server.record_exit(exitcodes.SIGNAL_BASE + signal.SIGKILL)
        await self._stop_stragglers(min(grace_s, STRAGGLER_GRACE_S))
        self.reap()
        assert self.server.exit_code is not None
        return self.server.exit_code

    async def wait_exit_or_escalation(self, timeout_s: float) -> bool:
        """Wait until the server exits, a further shutdown signal arrives, or `timeout_s` passes;
        True when the server has exited. Reaps as it waits, so it needs no other task."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.server.exited.is_set() and not self._escalate.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            exited = asyncio.create_task(self.server.exited.wait())
            escalated = asyncio.create_task(self._escalate.wait())
            try:
                await asyncio.wait(
                    {exited, escalated},
                    timeout=min(remaining, REAP_POLL_INTERVAL_S),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                exited.cancel()
                escalated.cancel()
            self.reap()
        return self.server.exited.is_set()

    async def _wait_exit(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.server.exited.is_set() and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.exited.wait(), min(0.05, deadline - loop.time()))
            self.reap()
        return self.server.exited.is_set()

    async def _stop_stragglers(self, grace_s: float) -> None:
        if not self.server.group_alive():
            return
        log.info("server exited but its process group lives on: sending SIGTERM")
        self.server.signal_group(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.server.group_alive() and loop.time() < deadline:
            await asyncio.sleep(0.05)
            self.reap()
        if self.server.group_alive():
            self.server.signal_group(signal.SIGKILL)

    def consume_escalation(self) -> None:
        self._escalate.clear()


def kill_group_now(server: ServerProcess, wait_s: float = KILL_WAIT_S) -> None:
    """The last resort, without an event loop: SIGKILL the server's whole group and reap the
    server (blocking, bounded). For when the orderly stop itself failed."""
    server.signal_group(signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while server.running and time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(server.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (by a reap-any wait): gone all the same
            server.exit_code = exitcodes.SIGNAL_BASE + signal.SIGKILL
            return
        if pid == server.pid:
            server.exit_code = exitcodes.from_wait_status(status)
            return
        time.sleep(0.01)


def describe_exit(code: int) -> str:
    if code > exitcodes.SIGNAL_BASE and code - exitcodes.SIGNAL_BASE < signal.NSIG:
        try:
            name = signal.Signals(code - exitcodes.SIGNAL_BASE).name
        except ValueError:
            name = f"signal {code - exitcodes.SIGNAL_BASE}"
        return f"killed by {name} (exit code {code})"
    return f"exit code {code}"
