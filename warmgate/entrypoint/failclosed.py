"""Fail closed: the one way out of `warmgate run` for anything unexpected, and its helpers.

Whatever escapes the lifecycle (an exception in the gate, in a task, in signal dispatch, a state
directory that breaks mid-run) ends in `fail_closed`: one log line (the traceback only at debug
level), the marker removed first and `failed` written with the reason (best effort: a failed
write never skips what follows), the server's whole group stopped (signal, grace, SIGKILL) and
reaped, and exit 83 (82 when it was the state directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
from typing import Any

from warmgate import exitcodes
from warmgate.config import Config
from warmgate.entrypoint.supervisor import Supervisor, kill_group_now
from warmgate.state import Phase, StateError, StateWriter

log = logging.getLogger("warmgate.run")

# A failure's one-line reason is cut to this many characters (state files and logs stay readable).
MAX_REASON_CHARS = 400


async def fail_closed(
    exc: Exception, config: Config, state: StateWriter | None, supervisor: Supervisor | None
) -> int:
    """The one way out for anything unexpected; see the module's docstring."""
    state_broke = isinstance(exc, StateError)
    reason = str(exc) if state_broke else f"warmgate failed: {describe_failure(exc)}"
    stopping = "; stopping the server" if supervisor is not None else ""
    log.error("%s%s", reason, stopping)
    log.debug("the failure's traceback", exc_info=exc)
    if state is not None:
        record_best_effort(state, Phase.FAILED, reason)
    if supervisor is not None:
        await stop_or_kill(supervisor, config.drain.grace_period_s)
    return exitcodes.STATE_DIR_UNUSABLE if state_broke else exitcodes.WARMGATE_FAILED


async def stop_or_kill(supervisor: Supervisor, grace_s: float) -> None:
    try:
        await supervisor.stop_server(supervisor.shutdown_signal, grace_s)
    except BaseException as exc:
        log.error("stopping the server failed (%s): sending SIGKILL to its group", describe_failure(exc))
        kill_group_now(supervisor.server)
        if not isinstance(exc, Exception):
            raise


def record_best_effort(state: StateWriter, phase: Phase, message: str) -> StateError | None:
    """Enter `phase` on a path that goes on regardless (failing, draining, stopping): never
    raises, so a full disk cannot skip stopping the server. set_phase removes the marker first;
    when even that fails, the instance lock is released, so the sidecar stops trusting it."""
    try:
        state.set_phase(phase, message)
        return None
    except Exception as exc:
        failure = exc if isinstance(exc, StateError) else StateError(describe_failure(exc))
    log.error("could not record %s: %s", phase.value, failure)
    with contextlib.suppress(Exception):
        if os.path.lexists(state.ready_path):
            log.error("the ready marker could not be removed: releasing the instance lock")
            state.close()
    return failure


def describe_failure(exc: BaseException) -> str:
    """One line: the exception, its message, and where it was raised (the innermost frame)."""
    text = " ".join(str(exc).split()) or "(no message)"
    where = ""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if frames:
        frame = frames[-1]
        marker = frame.filename.rfind("warmgate" + os.sep)
        path = frame.filename[marker:] if marker >= 0 else os.path.basename(frame.filename)
        where = f" (at {path}:{frame.lineno} in {frame.name})"
    line = f"{type(exc).__name__}: {text}"
    if len(line) > MAX_REASON_CHARS:
        line = line[: MAX_REASON_CHARS - 3] + "..."
    return line + where


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's reports (an exception never retrieved from a task, a failing callback) as one
    line; the traceback only at debug level."""
    exc = context.get("exception")
    message = context.get("message", "")
    if isinstance(exc, BaseException):
        log.error("%s: %s", message or "unhandled error in the event loop", describe_failure(exc))
        log.debug("its traceback", exc_info=exc)
    else:
        log.error("%s", " ".join(str(message).split()))
