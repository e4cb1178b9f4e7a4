"""Fail closed: whatever goes wrong inside `warmgate run`, it logs one line (no traceback), removes
the marker, says `failed`, stops the server's whole group, and exits with its own code. Real
processes and real faults: a broken state directory, a full disk, a gate or signal dispatcher
that raises (injected through `run`'s prover argument and the supervisor's forward hook, in a
driver script, since no server answer can reach those paths once answers are validated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fulldisk import fill, small_filesystem
from tests.support.procs import CHILD, Proc, free_port, poll_until, warmgate_env, write_config
from warmgate import exitcodes
from warmgate.state import writer_alive

PY = sys.executable

# Runs `warmgate run` in-process with a fault injected: argv = config, fault, subreaper(yes|no),
# then the server command. The prover prints the server's process tree before it fails.
DRIVER = textwrap.dedent(
    """
    import functools, logging, os, sys
    from pathlib import Path
    from warmgate import cli
    from warmgate.config import load_config
    from warmgate.protocols import adapters
    from warmgate.entrypoint import run as run_module

    config_path, fault, subreaper, *server = sys.argv[1:]

    def tree(pid):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *(p for child in children for p in tree(int(child)))]

    class FaultyProver:
        def __init__(self, ctx):
            self.ctx = ctx
        async def prepare(self):
            if fault == "prepare":
                raise RuntimeError("injected failure in prepare")
        async def prove(self):
            print("tree:", *tree(self.ctx.server.pid), flush=True)
            if fault == "prove":
                raise ValueError("output shape is not a list of integers\\nsecond line")
            # fault == "dispatch": wait for the signal whose forwarding fails
            await self.ctx.server.exited.wait()

    def boom(signum):
        raise OSError(5, "injected failure while forwarding")

    if subreaper == "no":
        run_module.become_subreaper = lambda: False
    if fault == "dispatch":
        run_module.Supervisor = functools.partial(run_module.Supervisor, on_forward=boom)
    logging.basicConfig(level=logging.INFO, format=cli.LOG_FORMAT, stream=sys.stderr)
    config = load_config(Path(config_path), protocols=adapters())
    sys.exit(run_module.run(config, server, once=False, prover=FaultyProver))
    """
)


def status_of(state: Path) -> dict:
    try:
        return json.loads((state / "status.json").read_text())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return {}


def gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for whoever now owns it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


def only_child(pid: int) -> int:
    return int(poll_until(lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split())[0])


def assert_one_line_failure(proc: Proc, expected: str) -> str:
    assert "Traceback" not in proc.output, proc.output
    errors = [line for line in proc.lines if " ERROR " in line]
    matching = [line for line in errors if expected in line]
    assert matching, proc.output
    return matching[0]


@pytest.fixture
def start_driver(tmp_path: Path) -> Callable[..., Proc]:
    started: list[Proc] = []

    def start(fault: str, port: int, *, subreaper: bool = True, **sections: object) -> Proc:
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port, **sections)
        server = [PY, CHILD, "echo", "--group", "--health", str(port)]
        argv = [PY, str(driver), str(config), fault, "yes" if subreaper else "no", *server]
        proc = Proc(argv, env=warmgate_env())
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def server_tree(proc: Proc) -> list[int]:
    line = proc.expect("tree:")
    pids = [int(pid) for pid in line.split("tree:")[1].split()]
    assert len(pids) == 2, line  # the server and its grandchild, one process group
    return pids


@pytest.mark.timeout(60)
@pytest.mark.parametrize("subreaper", [True, False], ids=["subreaper", "plain-child"])
def test_an_unexpected_error_in_the_gate_fails_closed(
    start_driver: Callable[..., Proc], tmp_path: Path, subreaper: bool
) -> None:
    state = tmp_path / "state"
    proc = start_driver("prove", free_port(), subreaper=subreaper)
    pids = server_tree(proc)
    assert proc.wait() == exitcodes.WARMGATE_FAILED == 83
    line = assert_one_line_failure(proc, "warmgate failed: ValueError: output shape is not a list")
    assert "second line" in line, "the message is joined into one line, not cut"
    assert "(at " in line and "in prove)" in line, "the line says where it was raised"
    assert "server got SIGTERM" in proc.output, "the server was stopped, politely first"
    status = status_of(state)
    assert status["phase"] == "failed"
    assert status["message"].startswith("warmgate failed: ValueError")
    assert not (state / "ready.json").exists()
    # Whether or not warmgate could adopt orphans, nothing of the server's group outlives it.
    poll_until(lambda: all(gone(pid) for pid in pids), timeout=5)


@pytest.mark.timeout(60)
def test_a_failure_in_a_background_task_fails_closed(
    start_driver: Callable[..., Proc], tmp_path: Path
) -> None:
    # prepare() runs as its own task while the server loads.
    proc = start_driver("prepare", free_port())
    assert proc.wait() == exitcodes.WARMGATE_FAILED
    assert_one_line_failure(proc, "warmgate failed: RuntimeError: injected failure in prepare")
    assert status_of(tmp_path / "state")["phase"] == "failed"
    assert "server got SIGTERM" in proc.output


@pytest.mark.timeout(60)
def test_a_failure_while_dispatching_a_signal_fails_closed(
    start_driver: Callable[..., Proc], tmp_path: Path
) -> None:
    proc = start_driver("dispatch", free_port(), subreaper=False)
    pids = server_tree(proc)
    proc.signal(signal.SIGHUP)  # forwarded, then the hook raises inside the dispatch task
    assert proc.wait() == exitcodes.WARMGATE_FAILED
    assert_one_line_failure(proc, "injected failure while forwarding")
    assert status_of(tmp_path / "state")["phase"] == "failed"
    poll_until(lambda: all(gone(pid) for pid in pids), timeout=5)


@pytest.mark.timeout(60)
def test_a_state_file_that_breaks_during_the_drain_does_not_skip_stopping_the_server(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start_warmgate(
        [PY, CHILD, "echo", "--health", str(port)], port=port, drain={"quiet_period_s": 0.5}
    )
    poll_until((state / "ready.json").exists)
    # The status file turns into something no rename can replace: every status write fails.
    (state / "status.json").unlink()
    (state / "status.json").mkdir()
    proc.signal(signal.SIGTERM)
    assert proc.wait() == exitcodes.STATE_DIR_UNUSABLE == 82
    assert not (state / "ready.json").exists(), "the marker goes first, whatever the status write does"
    assert "server got SIGTERM" in proc.output, "the drain went on to stop the server"
    assert_one_line_failure(proc, "could not record draining: cannot write")


@pytest.mark.timeout(60)
def test_a_full_disk_after_the_server_started_fails_closed(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    www = tmp_path / "www"
    www.mkdir()
    port = free_port()
    with small_filesystem(state):
        # A real server that turns healthy only when told to (GET /ok is 404 until the file exists).
        server = [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www)]
        proc = start_warmgate(server, port=port, server={"health_path": "/ok"})
        poll_until(lambda: status_of(state).get("phase") == "waiting-for-server")
        server_pid = only_child(proc.pid)
        fill(state)
        (www / "ok").write_text("ok")
        assert proc.wait() == exitcodes.STATE_DIR_UNUSABLE
        # Without shapes the next write is status `ready`, just before the marker: refused, so
        # the marker is never written at all.
        line = assert_one_line_failure(proc, "No space left on device")
        assert "cannot write" in line and "status.json" in line, proc.output
        assert not (state / "ready.json").exists()
    poll_until(lambda: gone(server_pid), timeout=5)


@pytest.mark.timeout(60)
def test_a_marker_that_cannot_be_removed_is_disowned_and_the_server_still_stopped(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a bind mount (a marker that cannot be unlinked: EBUSY) needs root")
    state = tmp_path / "state"
    port = free_port()
    proc = start_warmgate(
        [PY, CHILD, "echo", "--health", str(port)], port=port, drain={"quiet_period_s": 3600}
    )
    poll_until((state / "ready.json").exists)
    # A file mounted over the marker: unlink() fails with EBUSY, as on a volume gone wrong.
    cover = tmp_path / "cover.json"
    cover.write_text("{}")
    subprocess.run(["mount", "--bind", str(cover), str(state / "ready.json")], check=True)
    try:
        proc.signal(signal.SIGTERM)
        proc.expect("the ready marker could not be removed")
        # The marker stays, but its writer's lock is released: the sidecar calls it stale now,
        # during the quiet period, not once warmgate has exited.
        poll_until(lambda: writer_alive(state) is False, timeout=5)
        assert proc.popen.poll() is None
        proc.signal(signal.SIGTERM)  # ends the quiet period
        assert proc.wait() == exitcodes.STATE_DIR_UNUSABLE
    finally:
        subprocess.run(["umount", str(state / "ready.json")], check=False)
    assert "server got SIGTERM" in proc.output
    assert "Traceback" not in proc.output
