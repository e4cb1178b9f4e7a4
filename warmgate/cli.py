"""The `warmgate` command: parses arguments, hands off to the part that owns the subcommand.

Each part registers its own subcommands (`<part>/cli.py: add_parsers(subparsers)`), so this file
never restates their options. Handlers return an exit code; `main` exits exactly once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from warmgate import __version__, exitcodes
from warmgate.errors import ConfigError
from warmgate.probe import SERVE_COMMAND
from warmgate.redact import RedactingFilter

# Modules that register subcommands. They import only argparse-level code at module import;
# heavy dependencies (onnxruntime, torch, kubernetes) are imported inside the handlers.
SUBCOMMAND_MODULES = (
    "warmgate.entrypoint.commands",
    "warmgate.probe.cli",
    "warmgate.modelserver.cli",
    "warmgate.probe.promote_cli",
    "warmgate.probe.warmpool_cli",
    "warmgate.sidecar.cli",
)

# `warmgate run` is the container's ENTRYPOINT and spawns the server before it loads the rest of
# itself (entrypoint/spawnfirst.py): its parser comes from its own part alone, since the other
# parts' modules cost 0.1-0.2 s of imports that every pod start would wait for.
SPAWN_FIRST_COMMANDS = {"run": ("warmgate.entrypoint.commands", "add_run_parser")}

LOG_FORMAT = "%(asctime)s warmgate %(levelname)s %(message)s"


def build_parser(only: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """Every part's subcommands; `only`: (module, function) registering a single one."""
    parser = argparse.ArgumentParser(
        prog="warmgate",
        description="Keep model-server pods out of traffic until they are warm and proven fast.",
    )
    parser.add_argument("--version", action="version", version=f"warmgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if only is not None:
        module_name, register = only
        getattr(importlib.import_module(module_name), register)(subparsers)
        return parser
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional part whose extra is not installed
            logging.getLogger(__name__).debug("subcommands of %s unavailable: %s", module_name, exc)
            continue
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_cli(argv))


def run_cli(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == [SERVE_COMMAND]:
        # `warmgate probe`'s lean serving process (probe/launch.py): no parser and no subcommand
        # modules, nothing it does not serve with.
        from warmgate.probe.launch import serve_launch

        return _exit_code(lambda: serve_launch(arguments[1:]))
    parser = build_parser(SPAWN_FIRST_COMMANDS.get(arguments[0]) if arguments else None)
    # Everything after the first `--` is the server's own command line, never parsed by us.
    server_command: list[str] = []
    if "--" in arguments:
        split = arguments.index("--")
        arguments, server_command = arguments[:split], arguments[split + 1 :]
    args = parser.parse_args(arguments)
    if server_command and not getattr(args, "accepts_server_command", False):
        parser.error(f"{args.command} takes no server command after `--`")
    args.server_command = server_command
    return _exit_code(lambda: args.handler(args))


def _exit_code(handler: Callable[[], int]) -> int:
    """The handler's exit code; a ConfigError is its one line and exit 2."""
    try:
        return handler()
    except KeyboardInterrupt:
        return exitcodes.SIGNAL_BASE + 2
    except ConfigError as exc:
        print(f"warmgate: {exc}", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
