"""Subcommands of the entrypoint part: run, check, schema, report.

Imported before `warmgate run` spawns the server (spawn first: see spawnfirst.py), so everything
beyond argparse is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from warmgate import exitcodes
from warmgate.configfile import add_config_argument, config_from_args, config_path

log = logging.getLogger("warmgate")

# `warmgate report`: exit code when the report cannot be read (missing marker, not a report).
REPORT_UNREADABLE = 1
# A server started before its config turned out invalid has only been loading for the moments the
# validation took: it holds nothing worth the drain's grace period, so it gets this long after
# SIGTERM before SIGKILL, and the user their error line without waiting long.
INVALID_CONFIG_STOP_GRACE_S = 5.0


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_run_parser(subparsers)
    _add_other_parsers(subparsers)


def add_run_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`warmgate run` alone: what the CLI builds for it (spawn first), without the other
    subcommands' modules."""
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


def _add_other_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from warmgate.entrypoint import bake, shapes

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
    bake.add_parser(subparsers)  # `warmgate bake`: fill the artifact cache once, outside serving


def handle_run(args: argparse.Namespace) -> int:
    from warmgate.entrypoint.spawnfirst import spawn_first

    early = spawn_first(config_path(args), args.server_command)
    if early is None:
        return _validate_then_run(args)
    # The server is loading from here on: whatever stops warmgate before `run` adopts it stops
    # the server too, and reaps it.
    from warmgate.config import ConfigError

    try:
        config = config_from_args(args)
        command = list(args.server_command) or list(config.server.command)
        disagreement = early.disagreement(config.state_dir, command)
    except ConfigError as exc:
        early.stop(INVALID_CONFIG_STOP_GRACE_S, str(exc))
        raise
    except BaseException as exc:
        early.stop(0, f"warmgate failed while loading: {type(exc).__name__}")
        if not isinstance(exc, Exception):
            raise
        return _failed("warmgate failed while loading, after starting the server", exc)
    if disagreement is not None:
        message = f"what warmgate read before starting the server differs: {disagreement}"
        early.stop(0, message)
        log.error("warmgate failed: %s", message)
        return exitcodes.WARMGATE_FAILED
    from warmgate.entrypoint.run import run

    # run() owns the server from here: it fails closed by itself (stops it, exits 83).
    return run(config, early.argv, once=args.once, early=early)


def _validate_then_run(args: argparse.Namespace) -> int:
    """What spawning needs was not plainly readable: validate everything first, spawn after."""
    from warmgate.config import ConfigError
    from warmgate.entrypoint.run import run
    from warmgate.entrypoint.spawn import resolve_self

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
        return _failed("warmgate failed before starting the server", exc)


def _failed(what: str, exc: Exception) -> int:
    from warmgate.entrypoint.failclosed import describe_failure

    log.error("%s: %s", what, describe_failure(exc))
    log.debug("the failure's traceback", exc_info=exc)
    return exitcodes.WARMGATE_FAILED


def handle_check(args: argparse.Namespace) -> int:
    import yaml

    from warmgate.config import latency_slo_missing
    from warmgate.redact import redact_urls

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
    import json

    from warmgate.config import json_schema
    from warmgate.protocols import adapters

    sys.stdout.write(json.dumps(json_schema(protocols=adapters()), indent=2) + "\n")
    return 0


def handle_report(args: argparse.Namespace) -> int:
    from warmgate.entrypoint.report import format_report
    from warmgate.state import READY_FILE, StateReadError, read_report

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
