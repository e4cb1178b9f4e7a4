"""Subcommands of the entrypoint part: run, check, schema, report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from warmgate import exitcodes
from warmgate.config import ConfigError, json_schema, latency_slo_missing
from warmgate.configfile import add_config_argument, config_from_args
from warmgate.entrypoint import shapes
from warmgate.redact import redact_urls
from warmgate.state import READY_FILE, StateReadError, read_report

log = logging.getLogger("warmgate")

# `warmgate report`: exit code when the report cannot be read (missing marker, not a report).
REPORT_UNREADABLE = 1


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="the container ENTRYPOINT: start, warm and gate the model server",
        description="Start the model server (after `--`, else server.command), warm it, load-test it, "
        "write the ready marker when the gate passes, and supervise it as PID 1.",
    )
    add_config_argument(run)
    run.add_argument("--once", action="store_true", help="exit after the gate with its verdict (0 = ready)")
    # Everything after `--` is split off before argparse sees it (warmgate.cli), so the usage
    # line names it by hand, after the options argparse lists itself.
    run.usage = run.format_usage().removeprefix("usage: ").rstrip() + " [-- SERVER COMMAND...]"
    run.set_defaults(handler=handle_run, accepts_server_command=True)

    check = subparsers.add_parser(
        "check",
        help="validate a config and print the effective one",
        description="Validate warmup.yaml (with its WARMGATE_* overrides) and print the effective "
        "configuration; exit 2 with one line naming the YAML path and the bad value if it is invalid.",
    )
    add_config_argument(check)
    check.set_defaults(handler=handle_check)

    schema = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of warmup.yaml",
        description="Print the JSON Schema of warmup.yaml (for editors and CI validation).",
    )
    schema.set_defaults(handler=handle_schema)

    report = subparsers.add_parser(
        "report",
        help="print ready.json: first vs steady latency, load test, gate",
        description="Print ready.json as tables. Without a path, <state_dir>/ready.json of the config.",
    )
    report.add_argument("path", nargs="?", type=Path, help="a ready.json (default: <state_dir>/ready.json)")
    add_config_argument(report)
    report.set_defaults(handler=handle_report)
    shapes.add_parser(subparsers)  # `warmgate shapes`: a shapes: section from observed traffic


def handle_run(args: argparse.Namespace) -> int:
    from warmgate.entrypoint.failclosed import describe_failure
    from warmgate.entrypoint.run import run

    try:
        config = config_from_args(args)
        command = list(args.server_command) or list(config.server.command)
        if not command:
            raise ConfigError("no server command: give one after `--` or set server.command")
        # run() fails closed by itself (stops the server, exits 83); this covers what comes
        # before it, where nothing has been started yet.
        return run(config, resolve_self(command), once=args.once)
    except ConfigError:
        raise
    except Exception as exc:
        log.error("warmgate failed before starting the server: %s", describe_failure(exc))
        log.debug("the failure's traceback", exc_info=exc)
        return exitcodes.WARMGATE_FAILED


def resolve_self(command: list[str]) -> list[str]:
    """`warmgate` as the server command means this same installation (`warmgate serve`), found
    beside the running interpreter rather than on PATH: a venv that is not activated, or another
    warmgate earlier on PATH, must not change which server the default config starts."""
    if command[0] != "warmgate":
        return command
    script = Path(sys.executable).with_name("warmgate")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *command[1:]]
    return [sys.executable, "-m", "warmgate", *command[1:]]


def handle_check(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    effective = config.model_dump(mode="json")
    # libyaml's emitter where installed: the same text, twice as fast on a large literal value.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    sys.stdout.write(redact_urls(yaml.dump(effective, Dumper=dumper, sort_keys=False)))
    # stdout stays the effective config alone (it is piped into files and diffs); what the gate
    # will not judge goes to stderr.
    unjudged = latency_slo_missing(config)
    if unjudged is not None:
        log.warning("%s", unjudged)
    return 0


def handle_schema(args: argparse.Namespace) -> int:
    from warmgate.protocols import adapters

    sys.stdout.write(json.dumps(json_schema(protocols=adapters()), indent=2) + "\n")
    return 0


def handle_report(args: argparse.Namespace) -> int:
    from warmgate.entrypoint.report import format_report

    path: Path | None = args.path
    if path is None:
        path = config_from_args(args).state_dir / READY_FILE
    try:
        report = read_report(path)
    except StateReadError as exc:
        hint = " (the gate has not passed in this state directory)" if not path.exists() else ""
        print(f"warmgate: {exc}{hint}", file=sys.stderr)
        return REPORT_UNREADABLE
    sys.stdout.write(format_report(report) + "\n")
    return 0
