"""How every subcommand finds and loads warmup.yaml: `-c`, else `$WARMGATE_CONFIG`, else
`./warmup.yaml`, else built-in defaults; validated against the protocols the registry finds.

Shared by the parts (entrypoint, probe), so it sits below them and above the protocols.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from warmgate.config import Config, default_config_path, load_config

log = logging.getLogger("warmgate")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="warmup.yaml (default: $WARMGATE_CONFIG, else ./warmup.yaml)",
    )


def config_from_args(args: argparse.Namespace, *, check_files: bool = True) -> Config:
    """Load -c, else $WARMGATE_CONFIG, else ./warmup.yaml; built-in defaults if none exists.

    `check_files`: check every `data: file` (see config.load_config); off for a reader that
    never sends the warmup (the probe sidecar, whose container may not mount the data)."""
    path: Path | None = args.config
    if path is None:
        path = default_config_path()
        if not path.exists() and path == Path("warmup.yaml"):
            log.info("no ./warmup.yaml and no -c: using built-in defaults")
            path = None
    # Imported here: registering subcommands must stay argparse-light (the protocols pull in numpy).
    from warmgate.protocols import adapters

    config = load_config(path, protocols=adapters(), check_files=check_files)
    logging.getLogger().setLevel(config.log_level.upper())
    return config
