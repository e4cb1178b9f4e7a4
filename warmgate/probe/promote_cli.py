"""`warmgate promote`: the subcommand's options, their checks, and the one line it prints."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from warmgate.config import ConfigError
from warmgate.probe.kube import Connection, KubeError, connect
from warmgate.probe.promote import promote
from warmgate.probe.promote_options import (
    COLOR_LABEL,
    DEFAULT_PROBE_PORT,
    EXIT_NOT_PROMOTED,
    EXIT_PROMOTED,
    WARM_CONDITION,
    PromoteError,
    PromoteOptions,
)

log = logging.getLogger("warmgate.promote")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="blue/green: switch the Service once the new color is warm",
        description="Wait until every pod of the target color is Ready and warm, optionally compare "
        "its load-test p95 with the active color's, then switch the stable Service's selector "
        "(and the preview Service's back); optionally scale the old color down later.",
    )
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the Services and Deployments")
    parser.add_argument("--service", required=True, help="the stable Service (chart: appName)")
    parser.add_argument("--to", required=True, dest="target", metavar="COLOR", help="the color to promote")
    parser.add_argument(
        "--preview-service",
        default=None,
        help="switched to the old color (default: SERVICE-preview when it exists; '' for none)",
    )
    parser.add_argument("--color-label", default=COLOR_LABEL, help="default: %(default)s")
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument(
        "--condition",
        default=WARM_CONDITION,
        help="pod condition every target pod must carry (default: %(default)s)",
    )
    condition.add_argument(
        "--no-condition", action="store_true", help="require Ready only (chart without readinessGate.enabled)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="default: %(default)g"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=2.0, metavar="SECONDS", help="default: %(default)g"
    )
    parser.add_argument(
        "--max-p95-regression",
        type=float,
        default=None,
        metavar="FRACTION",
        help="refuse when the target's load-test p95 exceeds the active color's by more (0.1 = 10%%)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_PROBE_PORT,
        metavar="PORT",
        help="the sidecar's port, read for --max-p95-regression (default: %(default)s)",
    )
    parser.add_argument(
        "--scale-down-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="scale the old color's Deployments to 0 this long after the switch",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate every step with the API, change nothing"
    )
    add_api_arguments(parser)
    parser.set_defaults(handler=handle_promote)


def options_from_args(args: argparse.Namespace) -> PromoteOptions:
    checks: list[tuple[bool, str]] = [
        (args.timeout > 0, f"--timeout: must be > 0, got {args.timeout:g}"),
        (args.poll_interval > 0, f"--poll-interval: must be > 0, got {args.poll_interval:g}"),
        (
            args.max_p95_regression is None or args.max_p95_regression >= 0,
            f"--max-p95-regression: must be >= 0, got {args.max_p95_regression}",
        ),
        (
            args.scale_down_after is None or args.scale_down_after >= 0,
            f"--scale-down-after: must be >= 0, got {args.scale_down_after}",
        ),
        (1 <= args.metrics_port <= 65535, f"--metrics-port: must be 1-65535, got {args.metrics_port}"),
        (bool(args.target.strip()), "--to: must name a color"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return PromoteOptions(
        namespace=args.namespace,
        service=args.service,
        target=args.target,
        preview_service=args.preview_service,
        color_label=args.color_label,
        condition_type=None if args.no_condition else args.condition,
        timeout_s=args.timeout,
        poll_interval_s=args.poll_interval,
        max_p95_regression=args.max_p95_regression,
        metrics_port=args.metrics_port,
        scale_down_after_s=args.scale_down_after,
        dry_run=args.dry_run,
    )


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """How a command reaches the Kubernetes API; `connection_from_args` reads them back."""
    api = parser.add_argument_group("API access (default: in-cluster, else the kubeconfig)")
    api.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    api.add_argument("--context", default=None, metavar="NAME", help="kubeconfig context to use")
    api.add_argument("--server", default=None, metavar="URL", help="API server URL, instead of a kubeconfig")
    api.add_argument(
        "--token-file", type=Path, default=None, metavar="PATH", help="bearer token for --server"
    )
    api.add_argument(
        "--insecure-skip-tls-verify",
        action="store_true",
        help="do not verify the API server's certificate (whichever way it is reached)",
    )


def connection_from_args(args: argparse.Namespace) -> Connection:
    token = None
    if args.token_file is not None:
        if args.server is None:
            raise ConfigError("--token-file: needs --server")
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: cannot read {args.token_file}: {exc.strerror}") from None
    if args.server is not None and (args.kubeconfig is not None or args.context is not None):
        raise ConfigError("--server: give either --server or --kubeconfig/--context, not both")
    return Connection(
        server=args.server,
        token=token,
        kubeconfig=args.kubeconfig,
        context=args.context,
        insecure_skip_tls_verify=args.insecure_skip_tls_verify,
    )


def handle_promote(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    with connect(connection_from_args(args)) as kube:
        try:
            result = promote(kube, options)
        except (PromoteError, KubeError) as exc:
            log.error("%s", exc)
            return exc.exit_code if isinstance(exc, PromoteError) else EXIT_NOT_PROMOTED
    if result.previous == result.target:
        print(f"{options.service}: {result.target} is already active")
    elif result.dry_run:
        print(f"{options.service}: dry run: would switch {result.previous} -> {result.target}")
    else:
        scaled = f"; scaled down {', '.join(result.scaled_down)}" if result.scaled_down else ""
        print(f"{options.service}: switched {result.previous} -> {result.target}{scaled}")
    sys.stdout.flush()
    return EXIT_PROMOTED
