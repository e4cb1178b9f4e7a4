"""How every subcommand finds and loads warmup.yaml: `-c`, else `$WARMGATE_CONFIG`, else
`./warmup.yaml`, else built-in defaults; validated against the protocols the registry finds.

Shared by the parts (entrypoint, probe), so it sits below them and above the protocols. Imported
by every subcommand's parser and by `warmgate run` before it spawns the server (spawn first), so
the config models (pydantic) are imported only when a config is loaded.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path

# Not typing.TYPE_CHECKING: importing typing costs milliseconds before the spawn (mypy reads a
# variable of this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from warmgate.config import Config

log = logging.getLogger("warmgate")

# warmgate.config's DEFAULT_CONFIG_FILE, repeated so finding the file costs no import (a test
# keeps them equal).
DEFAULT_CONFIG_FILE = "warmup.yaml"
CONFIG_VARIABLE = "WARMGATE_CONFIG"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="warmup.yaml (default: $WARMGATE_CONFIG, else ./warmup.yaml)",
    )


def config_path(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Path | None:
    """-c, else $WARMGATE_CONFIG, else ./warmup.yaml; None (built-in defaults) when neither -c
    nor the variable names a file and there is no ./warmup.yaml."""
    path: Path | None = args.config
    if path is None:
        env = os.environ if environ is None else environ
        path = Path(env.get(CONFIG_VARIABLE) or DEFAULT_CONFIG_FILE)
        if not path.exists() and path == Path(DEFAULT_CONFIG_FILE):
            return None
    return path


def config_from_args(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    """Load -c, else $WARMGATE_CONFIG, else ./warmup.yaml; built-in defaults if none exists.

    `check_files`: check every `data: file` (see config.load_config); off for a reader that
    never sends the warmup (the probe sidecar, whose container may not mount the data)."""
    path = config_path(args)
    if path is None:
        log.info("no ./warmup.yaml and no -c: using built-in defaults")
    # Imported here: registering subcommands must stay argparse-light (pydantic; the protocols
    # pull in numpy).
    from warmgate.config import load_config
    from warmgate.protocols import adapters

    config = load_config(path, protocols=adapters(), check_files=check_files)
    logging.getLogger().setLevel(config.log_level.upper())
    return config
