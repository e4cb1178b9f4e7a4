"""Starting the model server: the part of PID 1's duties that runs before anything else.

`warmgate run` spawns the server within ~0.1 s of its own exec (spawn first), before asyncio, the
config models or the protocols are imported, so this module imports only the standard library's
cheapest parts. The supervisor (supervisor.py) takes the running server over once the event loop
exists.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from warmgate import exitcodes
from warmgate.artifacts.environment import child_environment

# Passed straight through to the server's process group.
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Start a (draining) shutdown; a second one escalates.
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED_SIGNALS = (*FORWARDED_SIGNALS, *SHUTDOWN_SIGNALS, signal.SIGCHLD)
# Every signal whose disposition can be set: the server gets each at SIG_DFL (SIGKILL and SIGSTOP
# cannot be changed, so posix_spawn would refuse them).
RESETTABLE_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}))
PR_SET_CHILD_SUBREAPER = 36
# After SIGKILL the kernel frees a process within milliseconds, unless it is stuck in an
# uninterruptible wait (a hung NFS or device driver): warmgate gives up waiting after this long
# rather than hang itself.
KILL_WAIT_S = 10.0
# How often a blocking stop (no event loop yet) looks whether the server has gone.
STOP_POLL_INTERVAL_S = 0.01


class SpawnError(Exception):
    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def block_handled_signals() -> None:
    """Hold the signals warmgate handles until `Supervisor.install` unblocks them: pending, not
    lost and not fatal, while the server is spawned (it gets an empty mask of its own)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)


def unblock_handled_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (what PID 1 gets for free), so we can reap them. Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: ctypes costs milliseconds of every start, and only Linux needs it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def server_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the server starts with: warmgate's own, plus what warmgate adds for it.

    The one place that decides it, for both spawn paths (spawnfirst.py's, and run.py's when the
    config had to be validated first), from the raw environment alone: nothing of the config is
    loaded yet, so whatever is added here must import only light modules. Additions keep
    whatever the user set: theirs win."""
    # The compile-cache variables under $WARMGATE_CACHE_DIR (warmgate/artifacts/environment.py).
    return child_environment(environ) or dict(environ)


def spawn_process(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Start `argv` as the leader of a new session and process group; return its pid."""
    if not argv:
        raise SpawnError(exitcodes.CONFIG_ERROR, "no server command given (server.command or `-- CMD`)")
    try:
        # A new session makes the server a process-group leader, so one killpg reaches its
        # workers too, and a terminal's ^C reaches only us (we forward it). Like tini, the
        # server starts with every signal at its default disposition and none blocked:
        # dispositions set to SIG_IGN survive exec, so a warmgate started under `nohup` (or
        # by a runtime that ignores or blocks signals) would otherwise hand the server a
        # SIGHUP that silently does nothing. posix_spawn does both resets in the child
        # without a Python pre-exec hook.
        return os.posix_spawnp(
            argv[0],
            list(argv),
            os.environ if env is None else env,
            setsid=True,
            setsigdef=RESETTABLE_SIGNALS,
            setsigmask=(),
        )
    except FileNotFoundError:
        raise SpawnError(exitcodes.COMMAND_NOT_FOUND, f"{argv[0]}: command not found") from None
    except PermissionError:
        raise SpawnError(exitcodes.COMMAND_NOT_EXECUTABLE, f"{argv[0]}: permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.ENOEXEC, errno.EISDIR, errno.EACCES):
            raise SpawnError(
                exitcodes.COMMAND_NOT_EXECUTABLE, f"{argv[0]}: cannot execute: {exc.strerror}"
            ) from None
        raise SpawnError(exitcodes.COMMAND_NOT_FOUND, f"{argv[0]}: {exc.strerror}") from None


def resolve_self(command: Sequence[str]) -> list[str]:
    """`warmgate` as the server command means this same installation (`warmgate serve`), found
    beside the running interpreter rather than on PATH: a venv that is not activated, or another
    warmgate earlier on PATH, must not change which server the default config starts."""
    if not command or command[0] != "warmgate":
        return list(command)
    script = Path(sys.executable).with_name("warmgate")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *command[1:]]
    return [sys.executable, "-m", "warmgate", *command[1:]]


def signal_group(pid: int, signum: int) -> bool:
    """Signal the process group `pid` leads; False when nobody is left in it."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed uid; signal at least the leader
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return False
    return True


def wait_for_exit(pid: int, timeout_s: float) -> int | None:
    """Reap `pid` within `timeout_s` (blocking, polled); its exit code, or None if it still runs.
    A pid already reaped elsewhere counts as killed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return exitcodes.SIGNAL_BASE + signal.SIGKILL
        if reaped == pid:
            return exitcodes.from_wait_status(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(STOP_POLL_INTERVAL_S)


def stop_process_group(pid: int, grace_s: float) -> int:
    """Stop a server that warmgate will not supervise after all (its config turned out invalid):
    SIGTERM to the group, `grace_s` to exit, then SIGKILL to whatever of the group is left (its
    workers too), and the server reaped. Blocking: there is no event loop yet. Returns its code."""
    signal_group(pid, signal.SIGTERM)
    code = wait_for_exit(pid, grace_s)
    signal_group(pid, signal.SIGKILL)
    if code is None:
        code = wait_for_exit(pid, KILL_WAIT_S)
    return exitcodes.SIGNAL_BASE + signal.SIGKILL if code is None else code
