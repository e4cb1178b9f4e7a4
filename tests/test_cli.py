"""The `warmgate` command's help, as a user reads it: the real CLI in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from warmgate.cli import build_parser

pytestmark = pytest.mark.timeout(60)

SUBCOMMANDS = (
    "run",
    "check",
    "schema",
    "probe",
    "sidecar",
    "serve",
    "promote",
    "warmpool",
    "report",
    "bake",
    "shapes",
)
# argparse wraps help at $COLUMNS - 2; 80 is the terminal a newcomer most likely has.
COLUMNS = "80"


def warmgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": COLUMNS}
    done = subprocess.run(
        [sys.executable, "-m", "warmgate", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def subcommand_lines(help_text: str) -> dict[str, str]:
    """{subcommand: its help} from `warmgate --help`, failing on a help that wraps."""
    section = help_text.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"    (\S+)\s+(\S.*)", line)
        assert match is not None, f"not a one-line subcommand description: {line!r}\n{section}"
        found[match[1]] = match[2]
    return found


def test_every_subcommand_has_a_one_line_description() -> None:
    listed = subcommand_lines(warmgate("--help").stdout)
    assert sorted(listed) == sorted(SUBCOMMANDS)
    for name, description in listed.items():
        assert len(description) > 15, f"{name}: {description!r}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_explains_itself_in_its_own_help(name: str) -> None:
    text = warmgate(name, "--help").stdout
    assert text.startswith(f"usage: warmgate {name} ")
    # A description paragraph between the usage and the option list.
    description = text.split("\n\n", 2)[1]
    assert not description.startswith(("options:", "positional arguments:")), text


def test_run_usage_shows_the_server_command() -> None:
    usage = warmgate("run", "--help").stdout.split("\n\n", 1)[0]
    assert " ".join(usage.split()) == "usage: warmgate run [-h] [-c CONFIG] [--once] [-- SERVER COMMAND...]"


def test_promote_help_lists_only_options_that_exist() -> None:
    text = warmgate("promote", "--help").stdout
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    promote = subparsers.choices["promote"]  # type: ignore[attr-defined]
    existing = {option for action in promote._actions for option in action.option_strings}
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert mentioned <= existing, f"help mentions options that do not exist: {mentioned - existing}"
    # And every option is listed with a word of help.
    for action in promote._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"


def test_check_prints_the_server_url_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "warmup.yaml"
    config.write_text("server:\n  url: http://warm:s3cret-pw@models:8000\n")
    printed = warmgate("check", "-c", str(config)).stdout
    assert "url: http://***@models:8000" in printed
    assert "s3cret-pw" not in printed
