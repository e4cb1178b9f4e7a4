"""`warmgate warmpool`: the subcommand's options, their checks, and the one line it prints.

API access (--kubeconfig, --context, --server, --token-file, --insecure-skip-tls-verify) works
exactly as for `warmgate promote`, whose connection_from_args it shares.
"""

from __future__ import annotations

import argparse
import logging
import sys

from warmgate.config import ConfigError
from warmgate.probe.kube import KubeError, connect
from warmgate.probe.promote_cli import add_api_arguments, connection_from_args
from warmgate.probe.promote_options import WARM_CONDITION
from warmgate.probe.warmpool import (
    EXIT_DONE,
    EXIT_NOT_SET,
    HpaKube,
    WarmPoolError,
    WarmPoolOptions,
    WarmPoolResult,
    set_floor,
)

log = logging.getLogger("warmgate.warmpool")


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "warmpool",
        help="set an HPA's minReplicas ahead of a peak, wait for warm pods",
        description="Set a HorizontalPodAutoscaler's spec.minReplicas (refused above its maxReplicas; "
        "nothing is patched when it already has the value), optionally wait until that many pods "
        "are Ready and warm. The chart's warmPool.schedules run it from CronJobs. Exit codes: 0 done, "
        "1 not set, 2 usage error, 3 set but the pods were not warm by --timeout.",
    )
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the HPA and its pods")
    parser.add_argument("--hpa", required=True, metavar="NAME", help="the HorizontalPodAutoscaler")
    parser.add_argument(
        "--min-replicas", type=int, required=True, metavar="N", help="the floor to set (>= 1)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="then wait until N pods are Ready and warm (see --timeout)"
    )
    parser.add_argument(
        "--selector",
        default=None,
        metavar="K=V[,K=V]",
        help="the pods to wait for (default: the scale target Deployment's matchLabels)",
    )
    condition = parser.add_mutually_exclusive_group()
    condition.add_argument(
        "--condition",
        default=WARM_CONDITION,
        help="pod condition a pod must carry to count as warm (default: %(default)s)",
    )
    condition.add_argument(
        "--no-condition", action="store_true", help="count Ready pods (chart without readinessGate.enabled)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, metavar="SECONDS", help="wait deadline (default: %(default)g)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, metavar="SECONDS", help="default: %(default)g"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate the patch with the API, change nothing"
    )
    add_api_arguments(parser)
    parser.set_defaults(handler=handle_warmpool)


def parse_selector(text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> {k: v, k2: v2}; equality terms only, as the chart writes them."""
    selector: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, equals, value = term.partition("=")
        if not equals or not key.strip() or "!" in key or value.startswith("="):
            raise ConfigError(f"--selector: {term!r} is not KEY=VALUE (only equality terms are supported)")
        selector[key.strip()] = value.strip()
    if not selector:
        raise ConfigError("--selector: empty")
    return selector


def options_from_args(args: argparse.Namespace) -> WarmPoolOptions:
    checks: list[tuple[bool, str]] = [
        (args.min_replicas >= 1, f"--min-replicas: must be >= 1, got {args.min_replicas}"),
        (args.timeout > 0, f"--timeout: must be > 0, got {args.timeout:g}"),
        (args.poll_interval > 0, f"--poll-interval: must be > 0, got {args.poll_interval:g}"),
        (bool(args.hpa.strip()), "--hpa: must name a HorizontalPodAutoscaler"),
        (args.selector is None or args.wait, "--selector: only with --wait"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return WarmPoolOptions(
        namespace=args.namespace,
        hpa=args.hpa,
        min_replicas=args.min_replicas,
        wait=args.wait,
        selector=parse_selector(args.selector) if args.selector is not None else None,
        condition_type=None if args.no_condition else args.condition,
        timeout_s=args.timeout,
        poll_interval_s=args.poll_interval,
        dry_run=args.dry_run,
    )


def summary(hpa: str, result: WarmPoolResult) -> str:
    if result.dry_run and result.patched:
        change = f"dry run: would set minReplicas {result.previous} -> {result.floor}"
    elif result.patched:
        change = f"minReplicas {result.previous} -> {result.floor}"
    else:
        change = f"minReplicas already {result.floor}"
    warm = f"; {result.warm_pods} pods warm" if result.warm_pods is not None else ""
    return f"{hpa}: {change} (maxReplicas {result.max_replicas}){warm}"


def handle_warmpool(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    connection = connection_from_args(args)
    with connect(connection) as base:
        kube = HpaKube(base.api_client)
        try:
            result = set_floor(kube, options)
        except (WarmPoolError, KubeError) as exc:
            log.error("%s", exc)
            return exc.exit_code if isinstance(exc, WarmPoolError) else EXIT_NOT_SET
    print(summary(options.hpa, result))
    sys.stdout.flush()
    return EXIT_DONE
