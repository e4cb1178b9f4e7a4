"""`warmgate probe`: serve the sidecar until TERM.

On the first TERM (or INT) every endpoint answers 503 at once, the readiness-gate condition (when
on) is set False, and the process exits after a short delay, so that the kubelet sees a clean
"not ready" rather than refused connections while the pod goes away. A second signal exits now.
Signal handlers only record the signal; this loop acts on it.

A program that composes the probe (`warmgate sidecar`) hands `serve` a `Companion`, run as one
task beside the HTTP server, and its own GET routes; the probe itself knows nothing of what the
companion does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from warmgate.probe.app import ExtraRoute, Probe, build_probe, create_app
from warmgate.probe.http_guard import HttpLimits, RateLimit, http_error_logger
from warmgate.probe.readiness_gate import (
    FOLLOW_INTERVAL_S,
    SERVICE_ACCOUNT_DIR,
    Condition,
    ReadinessGate,
    build_gate,
    follow_readiness,
)
from warmgate.probe.server_check import ServerCheck
from warmgate.probe.settings import Listen, ProbeSettings

log = logging.getLogger("warmgate.probe")

# How long the shutdown waits for the API to accept condition=False (never past --shutdown-delay).
GATE_SETTLE_S = 1.5
EXIT_CANNOT_LISTEN = 1


class Companion(Protocol):
    """Work run beside the probe server, in the same event loop."""

    async def run(self) -> int:
        """Runs until cancelled; when it returns by itself, the process exits with its code."""

    async def stop(self) -> None:
        """Called on the first TERM/INT, every endpoint already answering 503 (extra routes go on
        answering). The process exits once this returned and the shutdown delay has passed, or at
        a second signal; then `run` is cancelled."""


def run_probe(
    settings: ProbeSettings, check: ServerCheck, listen: Listen, environ: Mapping[str, str] | None = None
) -> int:
    return asyncio.run(
        serve(
            settings,
            check,
            host=listen.host,
            port=listen.port,
            shutdown_delay_s=listen.shutdown_delay_s,
            environ=os.environ if environ is None else environ,
        )
    )


async def serve(
    settings: ProbeSettings,
    check: ServerCheck,
    *,
    host: str,
    port: int,
    shutdown_delay_s: float,
    environ: Mapping[str, str],
    on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
    signals: asyncio.Queue[signal.Signals] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    gate_interval_s: float = FOLLOW_INTERVAL_S,
    limits: HttpLimits | None = None,
    companion: Companion | None = None,
    extra_routes: Sequence[ExtraRoute] = (),
) -> int:
    """Serve until a signal arrives (or the companion returns); returns the exit code. `check` is
    the model server's check (closed here). Tests inject `signals` (then no handlers are
    installed), point the readiness gate at a fake API via the environment and
    `service_account_dir`, and shrink the connection `limits`."""
    gate: ReadinessGate | None = None
    if settings.readiness_gate:
        # Raises ConfigError before anything listens when the pod cannot be named. The kubernetes
        # client itself is imported later, in the gate's worker thread.
        gate = build_gate(settings.condition_type, environ, service_account_dir=service_account_dir)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[signal.Signals] = asyncio.Queue() if signals is None else signals
    # Installed before the port opens: a TERM that arrives once anyone can see the probe must be
    # handled, not kill the process by default action.
    handled = (signal.SIGTERM, signal.SIGINT) if signals is None else ()
    for signum in handled:
        # The handler only records the signal; the loop below acts on it.
        loop.add_signal_handler(signum, queue.put_nowait, signum)
    limits = HttpLimits() if limits is None else limits
    probe = build_probe(settings, check, extra_routes=extra_routes)
    http_log, http_log_filter = http_error_logger(limits)
    app = create_app(probe)
    cap = limits.connection_cap()
    evictions = RateLimit(1, limits.log_window_s)

    def note_eviction(total: int) -> None:
        if evictions.allow():
            log.warning("connection cap (%d) reached: closing the oldest connections (%d so far)", cap, total)

    http = app.server(limits, http_log, on_evict=note_eviction)
    try:
        try:
            addresses = await http.start(host, port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, exc.strerror or exc)
            return EXIT_CANNOT_LISTEN
        for bound_host, bound_port in addresses:
            log.info("probe listening on http://%s:%d (state %s)", bound_host, bound_port, settings.state_dir)
        if on_listening is not None:
            on_listening(addresses)
        return await _until_signalled(
            probe, gate, gate_interval_s, shutdown_delay_s, queue, companion=companion
        )
    finally:
        await http.close()
        await app.close()
        http_log.removeFilter(http_log_filter)
        for signum in handled:
            loop.remove_signal_handler(signum)


async def _until_signalled(
    probe: Probe,
    gate: ReadinessGate | None,
    gate_interval_s: float,
    shutdown_delay_s: float,
    signals: asyncio.Queue[signal.Signals],
    *,
    companion: Companion | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    follower: asyncio.Task[None] | None = None
    work = asyncio.create_task(companion.run(), name="companion") if companion is not None else None
    stopping: asyncio.Future[None] | None = None
    if gate is not None:
        gate.start()
        follower = asyncio.create_task(
            follow_readiness(probe.evaluator.readiness, gate, gate_interval_s), name="follow-readiness"
        )
    try:
        first = asyncio.ensure_future(signals.get())
        await asyncio.wait({first} if work is None else {first, work}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            # The companion ended by itself: its exit code (or its exception) is the process's.
            first.cancel()
            probe.evaluator.begin_shutdown()
            assert work is not None
            return work.result()
        received = first.result()
        log.info("%s: answering 503 on every endpoint, exiting in %gs", received.name, shutdown_delay_s)
        probe.evaluator.begin_shutdown()
        if follower is not None:
            follower.cancel()
        deadline = loop.time() + shutdown_delay_s
        if companion is not None:
            stopping = asyncio.ensure_future(companion.stop())
        if gate is not None:
            gate.set_desired(Condition(False, "ProbeShuttingDown", "the probe sidecar is stopping"))
            if not await gate.settle(min(GATE_SETTLE_S, shutdown_delay_s)):
                log.warning("pod condition %s not confirmed False before exit", gate.condition_type)
        await _hold(signals, max(0.0, deadline - loop.time()), stopping)
        return 0
    finally:
        for task in (follower, stopping, work):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if gate is not None:
            await gate.close()


async def _hold(
    signals: asyncio.Queue[signal.Signals], seconds: float, stopping: asyncio.Future[None] | None
) -> None:
    """Wait `seconds` and for the companion's stop, unless a second signal comes first."""

    async def delay_and_stop() -> None:
        await asyncio.sleep(seconds)
        if stopping is not None:  # already running beside the delay: this waits for the later one
            await stopping

    held = asyncio.ensure_future(delay_and_stop())
    second = asyncio.ensure_future(signals.get())
    try:
        await asyncio.wait([held, second], return_when=asyncio.FIRST_COMPLETED)
        if second.done():
            log.info("%s again: exiting now", second.result().name)
        else:
            held.result()  # the companion's stop failing is worth its traceback
    finally:
        for task in (held, second):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
