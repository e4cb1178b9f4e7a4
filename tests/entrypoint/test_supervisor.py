"""PID 1 behaviour of `warmgate run`: exit codes, signal forwarding, grace, reaping (real processes)."""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import CHILD, Proc
from warmgate import exitcodes

PY = sys.executable


@pytest.mark.parametrize("code", [0, 1, 2, 127, 255])
def test_exits_with_the_servers_own_code(start_warmgate: Callable[..., Proc], code: int) -> None:
    proc = start_warmgate([PY, CHILD, "exit", str(code)])
    assert proc.wait() == code
    assert "server exited during" in proc.output


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL", "SIGHUP"])
def test_server_killed_by_signal_gives_128_plus_n(start_warmgate: Callable[..., Proc], signame: str) -> None:
    proc = start_warmgate([PY, CHILD, "kill", signame])
    assert proc.wait() == 128 + signal.Signals[signame].value
    assert f"killed by {signame}" in proc.output


def test_missing_command_is_127(start_warmgate: Callable[..., Proc], tmp_path: Path) -> None:
    proc = start_warmgate([str(tmp_path / "no-such-server")])
    assert proc.wait() == exitcodes.COMMAND_NOT_FOUND == 127
    assert "no-such-server: command not found" in proc.output
    assert "Traceback" not in proc.output


def test_non_executable_file_is_126(start_warmgate: Callable[..., Proc], tmp_path: Path) -> None:
    script = tmp_path / "server.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.geteuid() == 0:
        # root may execute files without the x bit only if some x bit is set; none is, so it is refused.
        pass
    proc = start_warmgate([str(script)])
    assert proc.wait() == exitcodes.COMMAND_NOT_EXECUTABLE == 126
    assert "permission denied" in proc.output or "cannot execute" in proc.output


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"])
def test_forwards_signals_to_the_whole_group(start_warmgate: Callable[..., Proc], signame: str) -> None:
    proc = start_warmgate([PY, CHILD, "echo", "--group"])
    proc.expect_all({"server ready", "grandchild ready"})
    proc.signal(signal.Signals[signame])
    seen = {proc.expect(lambda line: line.endswith(f"got {signame}")).split()[0] for _ in range(2)}
    assert seen == {"server", "grandchild"}
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


# Started the way `nohup` and some runtimes start PID 1: SIGHUP ignored, SIGUSR1 blocked. Both
# survive exec, so without a reset the server would inherit them.
HOSTILE_PARENT = [
    PY,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); os.execv(sys.argv[1], sys.argv[1:])",
]


def test_server_starts_with_default_dispositions_and_no_blocked_signals(
    start_warmgate: Callable[..., Proc],
) -> None:
    proc = start_warmgate([PY, CHILD, "inherited"], wrapper=HOSTILE_PARENT)
    proc.expect("ready")
    assert "ignored: " in proc.lines
    assert "blocked: " in proc.lines
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGTERM


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGUSR1"])
def test_forwarded_signal_takes_effect_under_a_hostile_parent(
    start_warmgate: Callable[..., Proc], signame: str
) -> None:
    # The server keeps every default: a forwarded SIGHUP or SIGUSR1 terminates it, which is only
    # true when warmgate neither leaves it ignored nor leaves it blocked (in itself or the server).
    proc = start_warmgate([PY, CHILD, "inherited"], wrapper=HOSTILE_PARENT)
    proc.expect("ready")
    proc.signal(signal.Signals[signame])
    assert proc.wait() == 128 + signal.Signals[signame].value


def test_term_reaches_the_whole_process_group(start_warmgate: Callable[..., Proc]) -> None:
    proc = start_warmgate([PY, CHILD, "echo", "--group"])
    proc.expect_all({"server ready", "grandchild ready"})
    proc.signal(signal.SIGTERM)
    seen = {proc.expect(lambda line: line.endswith("got SIGTERM")).split()[0] for _ in range(2)}
    assert seen == {"server", "grandchild"}
    assert proc.wait() == 0


def test_server_ignoring_term_is_killed_after_the_grace_period(start_warmgate: Callable[..., Proc]) -> None:
    proc = start_warmgate([PY, CHILD, "echo", "--ignore-term"], drain={"grace_period_s": 0.3})
    proc.expect("server ready")
    proc.signal(signal.SIGTERM)
    proc.expect("server got SIGTERM")
    assert proc.wait() == 128 + signal.SIGKILL
    assert "still running after 0.3s: sending SIGKILL" in proc.output


def test_second_term_escalates_to_sigkill(start_warmgate: Callable[..., Proc]) -> None:
    # A grace period far longer than the test timeout: only the escalation can end it in time.
    proc = start_warmgate([PY, CHILD, "echo", "--ignore-term"], drain={"grace_period_s": 3600})
    proc.expect("server ready")
    proc.signal(signal.SIGTERM)
    proc.expect("server got SIGTERM")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGKILL
    assert "second shutdown signal: sending SIGKILL" in proc.output


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreaper and /proc are Linux-only")
def test_orphaned_grandchildren_are_reaped(start_warmgate: Callable[..., Proc]) -> None:
    # The orphan is re-parented to warmgate (a child subreaper); once it exits, only warmgate
    # can reap it, and the server watches /proc until it disappears.
    proc = start_warmgate([PY, CHILD, "orphan"])
    proc.expect("server ready")
    assert proc.expect("orphan reaped", timeout=15) == "orphan reaped"
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


def _can_unshare_pid() -> bool:
    return Path("/usr/bin/unshare").exists() and os.geteuid() == 0


@pytest.mark.skipif(not _can_unshare_pid(), reason="a PID namespace needs util-linux unshare and root")
def test_reaps_orphans_as_pid_1_in_a_pid_namespace(start_warmgate: Callable[..., Proc]) -> None:
    proc = start_warmgate([PY, CHILD, "orphan"], wrapper=["unshare", "--fork", "--pid", "--mount-proc"])
    proc.expect("server ready")
    assert proc.expect("orphan reaped", timeout=15) == "orphan reaped"
    # `unshare` does not pass TERM on: signal warmgate (PID 1 inside, unshare's child outside).
    warmgate_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
    os.kill(warmgate_pid, signal.SIGTERM)
    assert proc.wait() == 0


@pytest.mark.timeout(20)
async def test_stopping_the_server_reaps_by_itself_when_no_task_is_left_to_reap() -> None:
    """The fail-closed path stops the server after the dispatch and reaping tasks may have died:
    stop_server must see the exit itself, not wait for a SIGCHLD nobody handles."""
    from warmgate.entrypoint.supervisor import ServerProcess, Supervisor

    server = ServerProcess.spawn([PY, CHILD, "echo"])
    supervisor = Supervisor(server, reap_any=False)  # never installed: no handler, no reaping task
    try:
        code = await supervisor.stop_server(signal.SIGTERM, grace_s=10)
    finally:
        if server.running:
            os.killpg(server.pid, signal.SIGKILL)
            os.waitpid(server.pid, 0)
    assert code in (0, 128 + signal.SIGTERM), "it exited on TERM, within the grace period"
    assert not server.group_alive()
