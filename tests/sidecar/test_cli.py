"""`warmgate sidecar` and `warmgate probe` serve the same probes: the same --host/--port/--shutdown-delay
flags, with the same help, and the same one-line errors and exit code for a bad value."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.conftest import sidecar_config
from tests.support.procs import free_port
from warmgate import exitcodes
from warmgate.cli import build_parser, run_cli

pytestmark = pytest.mark.timeout(60)

LISTEN_FLAGS = ("--host", "--port", "--shutdown-delay")


def listen_flags(command: str) -> dict[str, dict[str, Any]]:
    """What a user sees and gets of each listen flag of one subcommand."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[command]
    return {
        option: {
            "help": action.help,
            "default": action.default,
            "type": action.type,
            "metavar": action.metavar,
            "dest": action.dest,
        }
        for action in parser._actions
        for option in action.option_strings
        if option in LISTEN_FLAGS
    }


def test_sidecar_has_the_probes_listen_flags_with_the_same_help() -> None:
    probe = listen_flags("probe")
    assert set(probe) == set(LISTEN_FLAGS)
    assert listen_flags("sidecar") == probe


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    # Overrides from the environment (a readiness gate, a state dir) would change which error comes first.
    for name in list(os.environ):
        if name.startswith(("WARMGATE_", "POD_", "KUBERNETES_")):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_environ")
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "70000"], "warmgate: --port: must be between 0 and 65535, got 70000"),
        (["--port", "-1"], "warmgate: --port: must be between 0 and 65535, got -1"),
        (["--shutdown-delay", "-1"], "warmgate: --shutdown-delay: must be >= 0, got -1"),
    ],
    ids=["port-too-high", "port-negative", "delay-negative"],
)
def test_a_bad_listen_flag_exits_2_with_the_same_line_from_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    config = sidecar_config(tmp_path / "warmup.yaml", free_port())
    for command in ("probe", "sidecar"):
        code = run_cli([command, "-c", str(config), "--host", "127.0.0.1", *arguments])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == exitcodes.CONFIG_ERROR == 2, (command, error)
        assert error[-1] == message, (command, error)
    assert not (tmp_path / "state").exists(), "nothing starts on a bad flag"


@pytest.mark.usefixtures("clean_environ")
def test_sidecar_refuses_a_port_flag_equal_to_the_local_servers_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sidecar's own check comes after the shared ones, on the port the flag chose.
    server_port = free_port()
    config = sidecar_config(tmp_path / "warmup.yaml", server_port)
    code = run_cli(["sidecar", "-c", str(config), "--host", "127.0.0.1", "--port", str(server_port)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == exitcodes.CONFIG_ERROR, error
    assert error[-1] == (
        f"warmgate: probe.port: {server_port} is also the port of server.url http://127.0.0.1:{server_port}"
    )
