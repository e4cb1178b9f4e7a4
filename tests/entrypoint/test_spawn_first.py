"""Spawn first: `warmgate run` starts the server before it imports the config models, asyncio or
the protocols, validates the rest while the server loads, and still fails a bad config with one
line and exit 2, with the server stopped. The early reading of the config (spawnfirst.py) must
agree with the full validation, or decline."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.procs import CHILD, WARMGATE, Proc, free_port, warmgate_env, write_config
from warmgate import config as config_module
from warmgate import exitcodes, state
from warmgate.config import ConfigError, load_config
from warmgate.configfile import DEFAULT_CONFIG_FILE
from warmgate.entrypoint import diagnosis, spawnfirst
from warmgate.entrypoint.spawnfirst import Declined, plan_spawn
from warmgate.protocols import adapters

PY = sys.executable

# Runs `warmgate run` through the real CLI with the spawn observed: at the moment the server is
# started, which of the costly modules has this process imported?
SPY = textwrap.dedent(
    """
    import sys
    from warmgate.entrypoint import spawnfirst

    COSTLY = ("pydantic", "aiohttp", "asyncio", "numpy", "warmgate.config", "warmgate.protocols")
    real = spawnfirst.spawn_process

    def observed(argv, env):
        loaded = sorted(name for name in COSTLY if name in sys.modules)
        print("loaded at spawn:", ",".join(loaded) or "nothing", flush=True)
        return real(argv, env)

    spawnfirst.spawn_process = observed
    from warmgate.cli import main
    main()
    """
)


@pytest.mark.timeout(60)
def test_the_server_is_spawned_before_the_config_models_and_event_loop_are_imported(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port)
    spy = tmp_path / "spy.py"
    spy.write_text(SPY)
    server = [PY, CHILD, "echo", "--health", str(port)]
    proc = Proc([PY, str(spy), "run", "-c", str(config), "--once", "--", *server], env=warmgate_env())
    try:
        assert proc.wait(timeout=50) == 0, proc.output
    finally:
        proc.close()
    assert "loaded at spawn: nothing" in proc.output, proc.output
    assert "started server" in proc.output and "before loading the config" in proc.output


@pytest.mark.timeout(60)
def test_a_config_error_found_after_the_spawn_is_one_line_exit_2_and_the_server_is_stopped(
    tmp_path: Path,
) -> None:
    config = tmp_path / "warmup.yaml"
    # Readable for spawning (server.command and state_dir are fine), invalid further down.
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"server: {{command: [{PY}, {CHILD}, echo]}}\n"
        "shapes: [{name: a, inputs: {x: {dims: [0]}}}]\n"
    )
    proc = Proc([*WARMGATE, "run", "-c", str(config)], env=warmgate_env())
    try:
        assert proc.wait(timeout=50) == exitcodes.CONFIG_ERROR
    finally:
        proc.close()
    own = [line for line in proc.lines if not line.startswith("server ")]
    assert own == [f"warmgate: {config}: shapes[0].inputs.x.dims[0]: must be > 0, got 0"], proc.output
    # The server had started (it said so) and was asked to stop before warmgate exited.
    assert "server ready" in proc.lines and "server got SIGTERM" in proc.lines, proc.output
    assert not (tmp_path / "state" / "ready.json").exists()
    status = state.read_status(tmp_path / "state")
    assert status.phase is state.Phase.FAILED and "must be > 0, got 0" in status.message


@pytest.mark.timeout(60)
def test_a_state_dir_held_by_another_warmgate_still_fails_before_any_server_starts(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = write_config(tmp_path / "warmup.yaml", state_dir, free_port())
    with open(state_dir / state.LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = Proc([*WARMGATE, "run", "-c", str(config), "--", PY, CHILD, "echo"], env=warmgate_env())
        try:
            assert proc.wait(timeout=50) == exitcodes.STATE_DIR_UNUSABLE, proc.output
        finally:
            proc.close()
    assert "in use by another running warmgate" in proc.output
    assert "server ready" not in proc.output, "no server may start on a state dir it cannot own"


def test_the_early_status_is_a_status_the_readers_accept(tmp_path: Path) -> None:
    fd = spawnfirst._prepare_state_dir(tmp_path, "abc123")  # writes the `starting` status
    try:
        status = state.read_status(tmp_path)
    finally:
        if fd is not None:
            os.close(fd)
    assert status.instance_id == "abc123" and status.phase is state.Phase.STARTING
    assert status.pid == os.getpid()


def test_the_repeated_constants_are_the_full_configs_own() -> None:
    assert spawnfirst.DEFAULT_STATE_DIR == config_module.DEFAULT_STATE_DIR
    assert list(spawnfirst.DEFAULT_SERVER_COMMAND) == config_module.ServerConfig().command
    assert spawnfirst.MAX_CONFIG_BYTES == config_module.MAX_CONFIG_BYTES
    assert spawnfirst.STATE_DIR_VARIABLE in config_module.ENV_OVERRIDES
    assert config_module.ENV_OVERRIDES[spawnfirst.STATE_DIR_VARIABLE] == ("state_dir",)
    assert (spawnfirst.LOCK_FILE, spawnfirst.READY_FILE) == (state.LOCK_FILE, state.READY_FILE)
    assert (spawnfirst.STATUS_FILE, spawnfirst.STATUS_SCHEMA_VERSION) == (
        state.STATUS_FILE,
        state.SCHEMA_VERSION,
    )
    assert tuple(Path(p) for p in spawnfirst.PROC_NET_TCP) == diagnosis.PROC_NET_TCP
    assert DEFAULT_CONFIG_FILE == config_module.DEFAULT_CONFIG_FILE


# ---- the early reading agrees with the full validation, or declines -------------------------------

# (config text, WARMGATE_STATE_DIR or None, whether the early reading takes it)
CORPUS = [
    ("", None, True),
    ("{}\n", None, True),
    ("state_dir: /srv/state\n", None, True),
    ("state_dir: '/srv/with space'\n", None, True),
    ("state_dir: !!str /srv/tagged\n", None, True),
    ("state_dir: relative/dir\n", None, True),
    ("server: {command: [python, -m, app, '8000']}\n", None, True),
    ("server: {command: \"python -m app --name 'a b'\"}\n", None, True),
    ("server: !!map {command: [a, b]}\n", None, True),
    ("server: {url: 'http://127.0.0.1:9000'}\nstate_dir: /x\n", None, True),
    ("server: {command: &cmd [a, b]}\n", None, True),
    ("state_dir: /from/file\n", "/from/env", True),
    ("", "/var/run/warmgate-2", True),
    ("", "relative.dir/x_y", True),
    ("state_dir: 123\n", None, False),
    ("state_dir: ~\n", None, False),
    ("state_dir:\n", None, False),
    ("state_dir: 2001-01-01\n", None, False),
    ("state_dir: [a]\n", None, False),
    ("state_dir: /a\nstate_dir: /b\n", None, False),
    ("server:\n", None, False),
    ("server: [a]\n", None, False),
    ("server: {command: []}\n", None, False),
    ("server: {command: [a, 1]}\n", None, False),
    ("server: {command: [a, [b]]}\n", None, False),
    ('server: {command: "a \'b"}\n', None, False),
    ("server: {command: [a, !!binary aGk=]}\n", None, False),
    ("server: {<<: {command: [a]}}\n", None, False),
    ("<<: {state_dir: /x}\n", None, False),
    ("- a\n", None, False),
    ("a: 1\n---\nb: 2\n", None, False),
    ("load_test: [\n", None, False),
    ("", "123", False),
    ("", "true", False),
    ("", "null", False),
    ("", "~", False),
    ("", ".inf", False),
    ("", "/a b", False),
    ("", " /a", False),
    ("", "/a#b", False),
    ("", "!!str /a", False),
    ("", "'/a'", False),
    ("", "- a", False),
]


@pytest.mark.parametrize(("text", "env_state_dir", "taken"), CORPUS)
def test_the_early_reading_agrees_with_the_full_validation(
    tmp_path: Path, text: str, env_state_dir: str | None, taken: bool
) -> None:
    path = tmp_path / "warmup.yaml"
    path.write_text(text)
    environ = {} if env_state_dir is None else {"WARMGATE_STATE_DIR": env_state_dir}
    try:
        plan = plan_spawn(path, (), environ)
    except Declined:
        plan = None
    assert (plan is not None) is taken
    try:
        full = load_config(path, environ, protocols=adapters(), check_files=False)
    except ConfigError:
        full = None
    if plan is not None and full is not None:
        assert plan.state_dir == full.state_dir
        assert plan.command == tuple(full.server.command)
    if taken and "command" not in text and "server" not in text:
        assert full is not None, "a config the early reading takes whole must be valid"


def test_the_corpus_has_configs_both_readings_take() -> None:
    # Without these, the agreement test above could pass by declining everything.
    assert sum(taken for _, _, taken in CORPUS) >= 10
    assert sum(not taken for _, _, taken in CORPUS) >= 10


def test_a_command_after_the_double_dash_is_taken_as_given(tmp_path: Path) -> None:
    path = tmp_path / "warmup.yaml"
    path.write_text("server: {command: [from, config]}\n")
    plan = plan_spawn(path, ["from", "cli"], {})
    assert plan.command == ("from", "cli") and not plan.command_from_config
    assert plan_spawn(None, [], {}).command == spawnfirst.DEFAULT_SERVER_COMMAND


def test_with_a_command_and_the_state_dir_variable_the_file_is_not_read_early(
    tmp_path: Path,
) -> None:
    # The chart's case (`warmgate run -- CMD`, WARMGATE_STATE_DIR set): nothing is needed from the
    # file, so not even yaml is imported before the spawn; the full validation reads it after.
    path = tmp_path / "warmup.yaml"
    path.write_text("load_test: [\n")  # invalid YAML: reading it would decline
    plan = plan_spawn(path, ["server"], {"WARMGATE_STATE_DIR": str(tmp_path / "state")})
    assert plan.state_dir == tmp_path / "state" and plan.command == ("server",)
    probe = (
        "import sys; from pathlib import Path; from warmgate.entrypoint.spawnfirst import plan_spawn; "
        f"plan_spawn(Path({str(path)!r}), ['server'], {{'WARMGATE_STATE_DIR': '/x/y'}}); "
        "print('yaml' in sys.modules)"
    )
    done = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.timeout(60)
def test_a_term_while_the_config_loads_stops_the_server_it_already_started(tmp_path: Path) -> None:
    """The handled signals are blocked from the spawn until the supervisor handles them: a TERM
    that arrives while warmgate still loads is acted on then, never lost, never fatal to warmgate
    alone. Sent as soon as the server speaks, which on a busy machine is often mid-load."""
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", free_port())
    proc = Proc([*WARMGATE, "run", "-c", str(config), "--", PY, CHILD, "echo"], env=warmgate_env())
    try:
        proc.expect("server ready")
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.output  # the server's own exit code
    finally:
        proc.close()
    assert "server got SIGTERM" in proc.output
    assert "Traceback" not in proc.output
