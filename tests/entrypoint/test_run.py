"""The `warmgate run` lifecycle end to end with real processes: ready, drain, failures."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import CHILD, WARMGATE, Proc, free_port, poll_until, warmgate_env
from warmgate import exitcodes

PY = sys.executable


def read_status(state_dir: Path) -> dict:
    try:
        return json.loads((state_dir / "status.json").read_text())
    except FileNotFoundError:
        return {}


def healthy_server(port: int) -> list[str]:
    return [PY, CHILD, "echo", "--health", str(port)]


def test_ready_marker_then_drain_before_the_server_is_signalled(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start_warmgate(healthy_server(port), port=port, drain={"quiet_period_s": 2})
    poll_until((state / "ready.json").exists)
    assert read_status(state)["phase"] == "ready"

    proc.signal(signal.SIGTERM)
    draining = poll_until(lambda: read_status(state).get("phase") == "draining" and read_status(state))
    assert not (state / "ready.json").exists(), "readiness must fail before the server stops"
    assert draining["message"].startswith("quiet period 2s")
    assert proc.wait() == 0
    # Order, not timing: the drain was announced before the server received TERM.
    drain_line = next(i for i, line in enumerate(proc.lines) if "draining: readiness fails now" in line)
    term_line = next(i for i, line in enumerate(proc.lines) if "server got SIGTERM" in line)
    assert drain_line < term_line
    assert read_status(state)["phase"] == "stopped"


def test_second_term_cuts_the_quiet_period_short(start_warmgate: Callable[..., Proc], tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    # A quiet period far beyond the test timeout: only the second TERM can end it in time.
    proc = start_warmgate(healthy_server(port), port=port, drain={"quiet_period_s": 3600})
    poll_until((state / "ready.json").exists)
    proc.signal(signal.SIGTERM)
    proc.expect("draining: readiness fails now")
    proc.signal(signal.SIGTERM)
    proc.expect("server got SIGTERM")
    assert proc.wait() == 0


def test_third_term_during_drain_skips_the_grace_period(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start_warmgate(
        [*healthy_server(port), "--ignore-term"],
        port=port,
        drain={"quiet_period_s": 3600, "grace_period_s": 3600},
    )
    poll_until((state / "ready.json").exists)
    proc.signal(signal.SIGTERM)
    proc.expect("draining: readiness fails now")
    proc.signal(signal.SIGTERM)
    proc.expect("server got SIGTERM")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 128 + signal.SIGKILL


def test_server_exit_after_ready_removes_the_marker(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    port = free_port()
    proc = start_warmgate(healthy_server(port), port=port)
    poll_until((state / "ready.json").exists)
    os.kill(_only_child(proc.pid), signal.SIGKILL)
    assert proc.wait() == 128 + signal.SIGKILL
    assert not (state / "ready.json").exists()
    status = read_status(state)
    assert status["phase"] == "failed"
    assert "killed by SIGKILL" in status["message"]


def _only_child(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def test_server_never_healthy_exits_81_with_the_last_error(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    proc = start_warmgate([PY, CHILD, "echo"], server={"start_timeout_s": 0.5})
    assert proc.wait() == exitcodes.SERVER_NEVER_HEALTHY == 81
    assert "server not healthy after" in proc.output
    assert "cannot connect" in proc.output
    # It stopped the server it started: the echo child reported the TERM.
    assert "server got SIGTERM" in proc.output
    assert read_status(tmp_path / "state")["phase"] == "failed"


def test_credentials_in_the_server_url_never_reach_logs_or_state(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://warm:s3cret-pw@127.0.0.1:{port}"
    proc = start_warmgate([PY, CHILD, "echo"], port=port, server={"url": url, "start_timeout_s": 0.5})
    assert proc.wait() == exitcodes.SERVER_NEVER_HEALTHY
    assert f"http://***@127.0.0.1:{port}" in proc.output, "the log should still name the server"
    written = [path.read_text() for path in (tmp_path / "state").iterdir() if path.suffix == ".json"]
    assert written, "status.json was written"
    for text in [proc.output, *written]:
        assert "s3cret-pw" not in text


def test_once_exits_zero_after_the_gate_and_stops_the_server(start_warmgate: Callable[..., Proc]) -> None:
    port = free_port()
    proc = start_warmgate(healthy_server(port), port=port, once=True)
    assert proc.wait() == 0
    assert "server got SIGTERM" in proc.output


def test_stale_marker_from_an_earlier_run_is_removed_before_the_server_starts(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "ready.json").write_text('{"instance_id": "from-the-previous-container"}')
    (state / "status.json").write_text('{"instance_id": "from-the-previous-container"}')
    proc = start_warmgate([PY, CHILD, "echo"])
    proc.expect("server ready")
    assert not (state / "ready.json").exists()
    assert read_status(state)["instance_id"] != "from-the-previous-container"


def test_unusable_state_dir_is_a_clear_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = tmp_path / "warmup.yaml"
    config.write_text(f"state_dir: {blocker / 'state'}\n")
    proc = Proc([*WARMGATE, "run", "-c", str(config), "--", PY, CHILD, "echo"], env=warmgate_env())
    try:
        assert proc.wait() == exitcodes.STATE_DIR_UNUSABLE == 82
        assert f"state directory {blocker / 'state'} is not usable: Not a directory" in proc.output
        assert "server ready" not in proc.output, "the server must not start without a state dir"
        assert "Traceback" not in proc.output
    finally:
        proc.close()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("shapes: [{name: a, inputs: {x: {dims: [0]}}}]\n", "shapes[0].inputs.x.dims[0]: must be > 0, got 0"),
        ("server: {protocol: grpc}\n", "server.protocol: must be one of"),
        ("load_test: [\n", "invalid YAML at line 2"),
    ],
)
def test_config_errors_are_one_line_and_exit_2(tmp_path: Path, yaml_text: str, expected: str) -> None:
    config = tmp_path / "warmup.yaml"
    config.write_text(yaml_text)
    # A server that prints nothing: warmgate may have started it before it found the error (spawn
    # first; test_spawn_first.py checks that it is stopped), and the one line must be warmgate's only.
    silent_server = [PY, "-c", "import time; time.sleep(60)"]
    env = warmgate_env(WARMGATE_STATE_DIR=str(tmp_path / "state"))
    proc = Proc([*WARMGATE, "run", "-c", str(config), "--", *silent_server], env=env)
    try:
        assert proc.wait() == exitcodes.CONFIG_ERROR
        assert proc.lines == [f"warmgate: {config}: {expected}"] or (
            len(proc.lines) == 1 and expected in proc.lines[0]
        ), proc.output
    finally:
        proc.close()


def test_server_command_from_the_config_when_none_is_given(tmp_path: Path) -> None:
    config = tmp_path / "warmup.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nserver: {{command: [{PY}, {CHILD}, exit, '7']}}\n")
    proc = Proc([*WARMGATE, "run", "-c", str(config)], env=warmgate_env())
    try:
        assert proc.wait() == 7
    finally:
        proc.close()


def test_usage_error_for_a_server_command_where_none_is_taken() -> None:
    proc = Proc([*WARMGATE, "check", "--", "ls"], env=warmgate_env())
    try:
        assert proc.wait() == exitcodes.CONFIG_ERROR
        assert "takes no server command" in proc.output
    finally:
        proc.close()


def test_warmgate_as_server_command_is_this_installation_even_off_path(tmp_path: Path) -> None:
    # The default config runs `warmgate serve`; an unactivated venv has no warmgate on PATH.
    config = tmp_path / "warmup.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    env = warmgate_env(PATH="/usr/bin:/bin")
    proc = Proc([*WARMGATE, "run", "-c", str(config), "--", "warmgate", "schema"], env=env)
    try:
        # `warmgate schema` exits 0 at once, so the run ends with the server's own code: 0, not 127.
        assert proc.wait() == 0, proc.output
        assert '"title": "warmgate warmup.yaml"' in proc.output
    finally:
        proc.close()


# ---- unambiguous start-up mistakes fail in seconds, not after start_timeout_s --------------------


def _mistake_line(proc: Proc) -> str:
    """The one ERROR line naming the mistake; nothing multi-line, no traceback."""
    assert "Traceback" not in proc.output, proc.output
    errors = [line for line in proc.lines if " ERROR " in line and "server not usable" in line]
    assert len(errors) == 1, proc.output
    return errors[0]


@pytest.mark.timeout(90)
def test_a_model_the_server_does_not_serve_fails_fast_naming_what_it_serves(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    server = [PY, "-m", "warmgate", "serve", "--demo", "--port", str(port), "--cache-dir", str(tmp_path)]
    proc = start_warmgate(
        server,
        port=port,
        server={
            "protocol": "oip",
            "model": "resnet-typo",
            "health_path": None,
            "http": None,
            "start_timeout_s": 60,
            "unknown_model_grace_s": 1,
        },
    )
    assert proc.wait(timeout=80) == exitcodes.SERVER_NEVER_HEALTHY
    line = _mistake_line(proc)
    assert "server.model 'resnet-typo' is not served" in line
    assert "HTTP 404" in line and "this server serves 'demo'" in line, line
    assert read_status(tmp_path / "state")["phase"] == "failed"


@pytest.mark.timeout(60)
def test_a_port_served_before_the_server_started_is_an_error_not_a_healthy_server(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    # Someone else's server on the configured port, answering 200 on every GET.
    squatter = Proc([PY, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)])
    try:
        squatter.expect("Serving HTTP")
        proc = start_warmgate([PY, CHILD, "echo"], port=port)
        assert proc.wait() == exitcodes.SERVER_NEVER_HEALTHY
        line = _mistake_line(proc)
        assert f"port {port} of server.url http://127.0.0.1:{port} was already in use" in line
        assert f"pid {squatter.pid}" in line and "http.server" in line, line
        assert "gate passed" not in proc.output
        assert "server got SIGTERM" in proc.output, "the server warmgate started is stopped"
    finally:
        squatter.close()


@pytest.mark.timeout(60)
def test_a_server_ready_on_another_port_fails_fast_naming_its_ports(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    configured, actual = free_port(), free_port()
    proc = start_warmgate([PY, CHILD, "echo", "--health", str(actual)], port=configured)
    assert proc.wait() == exitcodes.SERVER_NEVER_HEALTHY
    line = _mistake_line(proc)
    assert f"nothing listens on port {configured}" in line
    assert f"listens on 127.0.0.1:{actual} and is ready at http://127.0.0.1:{actual}:" in line, line
    assert read_status(tmp_path / "state")["phase"] == "failed"
