"""`warmgate promote`: blue/green promotion through the Kubernetes API.

The chart labels each color's Deployment and pods `warmgate.dev/color: <color>`; the stable Service
selects the active color and the preview Service the other one. Promotion:

1. read the stable Service: its selector names the active color;
2. wait (bounded) until the target color's rollout is complete and every one of its pods is Ready
   and carries the warm condition the sidecar sets (`warmgate.dev/warm`);
3. optionally compare the target's load-test p95 (from the sidecars' /metrics, through the API
   server's pod proxy) with the active color's, and refuse a regression beyond a margin;
4. switch: patch the stable Service's selector to the target color (guarded by the resourceVersion
   read in step 1, so a concurrent change fails instead of being overwritten), then the preview
   Service's to the old color; if the second patch fails the first is reverted: never half-switched;
5. optionally, after a delay and only if the Service still selects the target, scale the old
   color's Deployments to 0 (their replica count is kept in an annotation for a rollback).

Dry-run sends every patch with dryRun=All: the API server validates it and persists nothing.
Everything is logged; failures raise PromoteError (nothing switched) and the CLI exits 1.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmgate.config import ConfigError
from warmgate.probe.kube import Connection, Kube, KubeError, connect

log = logging.getLogger("warmgate.promote")

COLOR_LABEL = "warmgate.dev/color"
WARM_CONDITION = "warmgate.dev/warm"
P95_METRIC = "warmgate_loadtest_latency_seconds"
P95_QUANTILE = "0.95"
REPLICAS_ANNOTATION = "warmgate.dev/replicas-before-scale-down"
DEFAULT_PROBE_PORT = 8086

# Exit codes of `warmgate promote` (2, a usage error, comes from the CLI).
EXIT_PROMOTED = 0
EXIT_NOT_PROMOTED = 1
# Traffic is on the target color, but scaling the old one down failed.
EXIT_SCALE_DOWN_FAILED = 3
# The stable Service was switched, the preview could not be, and the revert failed too.
EXIT_HALF_SWITCHED = 4


class PromoteError(Exception):
    """Promotion refused or failed; exit_code tells whether traffic moved (see EXIT_*)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_NOT_PROMOTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class PromoteOptions:
    namespace: str
    service: str
    target: str
    # None: "<service>-preview" when it exists; "" : no preview Service.
    preview_service: str | None = None
    color_label: str = COLOR_LABEL
    # None: Ready alone is enough (charts without the readiness gate; /readyz already gates Ready).
    condition_type: str | None = WARM_CONDITION
    timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    # Refuse when target p95 > active p95 x (1 + this). None: no comparison.
    max_p95_regression: float | None = None
    metrics_port: int = DEFAULT_PROBE_PORT
    # Scale the old color to 0 this long after the switch. None: leave it running.
    scale_down_after_s: float | None = None
    dry_run: bool = False


@dataclass
class PromoteResult:
    previous: str
    target: str
    switched: bool
    dry_run: bool
    services: list[str] = field(default_factory=list)
    target_p95_s: float | None = None
    active_p95_s: float | None = None
    scaled_down: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Service:
    name: str
    selector: dict[str, str]
    resource_version: str


def promote(
    kube: Kube,
    options: PromoteOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PromoteResult:
    """Run the promotion; raises PromoteError (or KubeError) when it does not happen."""
    ns, label = options.namespace, options.color_label
    prefix = "dry run: " if options.dry_run else ""

    stable = _read_service(kube, ns, options.service, label)
    previous = stable.selector[label]
    result = PromoteResult(previous=previous, target=options.target, switched=False, dry_run=options.dry_run)
    log.info(
        "%sservice %s/%s selects %s=%s; target %s",
        prefix, ns, stable.name, label, previous, options.target,
    )  # fmt: skip
    if previous == options.target:
        log.info("%s is already the active color: nothing to do", options.target)
        return result

    preview = _find_preview(kube, ns, options, label)
    target_selector = {**stable.selector, label: options.target}
    active_selector = {**stable.selector, label: previous}

    target_pods = wait_until_warm(kube, ns, target_selector, options, clock=clock, sleep=sleep)

    if options.max_p95_regression is not None:
        result.target_p95_s, result.active_p95_s = compare_p95(
            kube, ns, target_pods, active_selector, options
        )

    result.services = switch(kube, ns, stable, preview, options=options, previous=previous)
    result.switched = not options.dry_run
    log.info(
        "%straffic switched: %s now selects %s=%s%s",
        prefix,
        stable.name,
        label,
        options.target,
        f"; {preview.name} selects {label}={previous}" if preview else "",
    )

    if options.scale_down_after_s is not None:
        try:
            result.scaled_down = scale_down(kube, ns, stable.name, active_selector, options, sleep=sleep)
        except (KubeError, PromoteError) as exc:
            raise PromoteError(
                f"promoted to {options.target}, but scaling {previous} down failed: {exc}",
                exit_code=EXIT_SCALE_DOWN_FAILED,
            ) from None
    return result


def _read_service(kube: Kube, ns: str, name: str, label: str) -> _Service:
    service = kube.get_service(ns, name)
    selector = dict((service.get("spec") or {}).get("selector") or {})
    if label not in selector:
        raise PromoteError(
            f"service {ns}/{name} has no {label} in its selector ({_fmt(selector) or 'no selector'}): "
            "is it the stable Service of a blue/green install (chart value color)?"
        )
    return _Service(name, selector, str((service.get("metadata") or {}).get("resourceVersion") or ""))


def _find_preview(kube: Kube, ns: str, options: PromoteOptions, label: str) -> _Service | None:
    if options.preview_service == "":
        return None
    name = options.preview_service or f"{options.service}-preview"
    if options.preview_service is None and kube.find_service(ns, name) is None:
        log.info("no preview service %s/%s: only the stable service is switched", ns, name)
        return None
    return _read_service(kube, ns, name, label)


# ---- step 2: wait until every target pod is Ready and warm ----------------------------------------


def pod_problem(pod: Mapping[str, Any], condition_type: str | None) -> str | None:
    """Why this pod is not ready to take traffic, or None when it is."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase != "Running":
        return f"phase {phase}"
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    for wanted in ("Ready", condition_type):
        if wanted is None:
            continue
        condition = conditions.get(wanted)
        if condition is None:
            hint = (
                " (is the chart's readinessGate.enabled on? else pass --no-condition)"
                if wanted != "Ready"
                else ""
            )
            return f"no {wanted} condition{hint}"
        if condition.get("status") != "True":
            why = condition.get("reason") or condition.get("message") or ""
            return f"{wanted}={condition.get('status')}" + (f" ({why})" if why else "")
    return None


def _rollout_problem(deployments: Sequence[Mapping[str, Any]]) -> tuple[int, str | None]:
    """(desired replicas, why the rollout is not complete) over the target color's Deployments."""
    desired = 0
    for deployment in deployments:
        name = (deployment.get("metadata") or {}).get("name", "?")
        spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
        replicas = int(spec.get("replicas", 1))
        desired += replicas
        generation = int((deployment.get("metadata") or {}).get("generation") or 0)
        if int(status.get("observedGeneration") or 0) < generation:
            return desired, f"deployment {name}: rollout not observed yet"
        if int(status.get("updatedReplicas") or 0) < replicas:
            return desired, f"deployment {name}: {status.get('updatedReplicas') or 0}/{replicas} pods updated"
        if int(status.get("replicas") or 0) > replicas:
            return desired, f"deployment {name}: {status['replicas'] - replicas} old pods still terminating"
    return desired, None


def wait_until_warm(
    kube: Kube,
    ns: str,
    selector: Mapping[str, str],
    options: PromoteOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Poll until the target color is fully rolled out, Ready and warm; return its pods."""
    deadline = clock() + options.timeout_s
    what = f"{options.color_label}={options.target}"
    last_summary = ""
    while True:
        deployments = kube.list_deployments(ns, selector)
        pods = [
            p for p in kube.list_pods(ns, selector) if not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        if deployments:
            desired, rollout = _rollout_problem(deployments)
            if desired == 0:
                names = ", ".join(d["metadata"]["name"] for d in deployments)
                raise PromoteError(f"{what} is scaled to 0 ({names}): scale it up and let it warm first")
        else:
            desired, rollout = max(len(pods), 1), None
        problems = {p["metadata"]["name"]: pod_problem(p, options.condition_type) for p in pods}
        warm = [name for name, problem in problems.items() if problem is None]
        if not pods:
            blocker = "no pods"
        elif rollout is not None:
            blocker = rollout
        elif len(warm) < len(pods):
            name, problem = next((n, p) for n, p in sorted(problems.items()) if p is not None)
            blocker = f"pod {name}: {problem}"
        elif len(warm) < desired:
            blocker = f"{len(warm)}/{desired} pods exist"
        else:
            log.info(
                "%s: all %d pods Ready%s",
                what,
                len(pods),
                f" and {options.condition_type}" * bool(options.condition_type),
            )
            return pods

        summary = f"{len(warm)}/{max(desired, len(pods))} pods Ready and warm; waiting on {blocker}"
        if summary != last_summary:
            log.info("%s: %s", what, summary)
            last_summary = summary
        if clock() >= deadline:
            raise PromoteError(f"timed out after {options.timeout_s:g}s waiting for {what}: {summary}")
        sleep(min(options.poll_interval_s, max(deadline - clock(), 0.0)))


# ---- step 3: compare the load-test p95 ------------------------------------------------------------


def parse_p95(text: str) -> float | None:
    """warmgate_loadtest_latency_seconds{quantile="0.95"} from a Prometheus exposition, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == P95_METRIC and sample.labels.get("quantile") == P95_QUANTILE:
                    value = float(sample.value)
                    return value if math.isfinite(value) else None
    except ValueError as exc:
        raise PromoteError(f"cannot parse the sidecar's metrics: {exc}") from None
    return None


def _pod_p95(kube: Kube, ns: str, pod: Mapping[str, Any], port: int) -> float | None:
    name = pod["metadata"]["name"]
    value = parse_p95(kube.pod_proxy_get(ns, name, port, "/metrics"))
    log.info("pod %s: load-test p95 %s", name, "missing" if value is None else f"{value * 1000:.1f} ms")
    return value


def compare_p95(
    kube: Kube,
    ns: str,
    target_pods: Sequence[Mapping[str, Any]],
    active_selector: Mapping[str, str],
    options: PromoteOptions,
) -> tuple[float, float]:
    """(target p95, active p95): the target's worst pod against the active color's median pod."""
    assert options.max_p95_regression is not None
    port = options.metrics_port
    target_values = [_pod_p95(kube, ns, pod, port) for pod in target_pods]
    missing = [p["metadata"]["name"] for p, v in zip(target_pods, target_values, strict=True) if v is None]
    if missing:
        raise PromoteError(
            f"no load-test p95 in the metrics of {', '.join(missing)} (was the load test disabled?)"
        )
    active_pods = [
        p for p in kube.list_pods(ns, active_selector)
        if not (p.get("metadata") or {}).get("deletionTimestamp") and pod_problem(p, None) is None
    ]  # fmt: skip
    active_values = [v for v in (_pod_p95(kube, ns, pod, port) for pod in active_pods) if v is not None]
    if not active_values:
        raise PromoteError(
            f"no baseline: no Ready pod of {options.color_label}={active_selector[options.color_label]} "
            "reports a load-test p95; promote without --max-p95-regression to skip the comparison"
        )
    target_p95 = max(v for v in target_values if v is not None)
    active_p95 = statistics.median(active_values)
    limit = active_p95 * (1 + options.max_p95_regression)
    verdict = (
        f"target p95 {target_p95 * 1000:.1f} ms (worst of {len(target_values)} pods) vs active "
        f"{active_p95 * 1000:.1f} ms (median of {len(active_values)}), limit {limit * 1000:.1f} ms "
        f"(+{options.max_p95_regression:.0%})"
    )
    if target_p95 > limit:
        raise PromoteError(f"refused: p95 regression: {verdict}")
    log.info("p95 check passed: %s", verdict)
    return target_p95, active_p95


# ---- step 4: switch the Services, never half-way ----------------------------------------------------


def switch(
    kube: Kube, ns: str, stable: _Service, preview: _Service | None, *, options: PromoteOptions, previous: str
) -> list[str]:
    label, dry = options.color_label, options.dry_run
    prefix = "dry run: " if dry else ""
    stable_patch: dict[str, Any] = {"spec": {"selector": {label: options.target}}}
    if stable.resource_version:
        # Optimistic concurrency: if the Service changed since it was read, the API answers 409.
        stable_patch["metadata"] = {"resourceVersion": stable.resource_version}
    log.info("%spatching service %s/%s: selector %s=%s", prefix, ns, stable.name, label, options.target)
    try:
        kube.patch_service(ns, stable.name, stable_patch, dry_run=dry)
    except KubeError as exc:
        raise PromoteError(f"not switched: {exc}") from None
    if preview is None:
        return [stable.name]

    log.info("%spatching service %s/%s: selector %s=%s", prefix, ns, preview.name, label, previous)
    preview_patch: dict[str, Any] = {"spec": {"selector": {label: previous}}}
    if preview.resource_version:
        preview_patch["metadata"] = {"resourceVersion": preview.resource_version}
    try:
        kube.patch_service(ns, preview.name, preview_patch, dry_run=dry)
    except KubeError as exc:
        if dry:
            raise PromoteError(f"not switched (dry run): {exc}") from None
        log.error(
            "patching %s failed (%s): reverting %s to %s=%s", preview.name, exc, stable.name, label, previous
        )
        try:
            kube.patch_service(ns, stable.name, {"spec": {"selector": {label: previous}}})
        except KubeError as revert_exc:
            raise PromoteError(
                f"HALF-SWITCHED: {stable.name} selects {options.target} but {preview.name} could not be "
                f"patched ({exc}) and reverting {stable.name} failed ({revert_exc}); fix by hand: "
                f"kubectl -n {ns} patch service {stable.name} --type merge "
                f'-p \'{{"spec":{{"selector":{{"{label}":"{previous}"}}}}}}\'',
                exit_code=EXIT_HALF_SWITCHED,
            ) from None
        raise PromoteError(f"not switched: {exc}; {stable.name} reverted to {previous}") from None
    return [stable.name, preview.name]


# ---- step 5: scale the old color down ---------------------------------------------------------------


def scale_down(
    kube: Kube,
    ns: str,
    service: str,
    old_selector: Mapping[str, str],
    options: PromoteOptions,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Scale the old color's Deployments to 0 after the delay, unless traffic went back to it."""
    assert options.scale_down_after_s is not None
    label, old = options.color_label, old_selector[options.color_label]
    prefix = "dry run: " if options.dry_run else ""
    if options.scale_down_after_s > 0 and not options.dry_run:
        log.info("scaling %s=%s down in %gs", label, old, options.scale_down_after_s)
        sleep(options.scale_down_after_s)
    if not options.dry_run:
        current = _read_service(kube, ns, service, label).selector[label]
        if current != options.target:
            log.warning("service %s selects %s=%s again: %s left running", service, label, current, old)
            return []
    deployments = kube.list_deployments(ns, old_selector)
    if not deployments:
        log.warning("no deployment labelled %s: nothing to scale down", _fmt(old_selector))
    scaled: list[str] = []
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        replicas = int((deployment.get("spec") or {}).get("replicas", 1))
        log.info("%sscaling deployment %s/%s from %d to 0 replicas", prefix, ns, name, replicas)
        patch = {
            "metadata": {"annotations": {REPLICAS_ANNOTATION: str(replicas)}},
            "spec": {"replicas": 0},
        }
        kube.patch_deployment(ns, name, patch, dry_run=options.dry_run)
        scaled.append(name)
    return scaled


def _fmt(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


# ---- CLI -------------------------------------------------------------------------------------------


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="blue/green: switch the stable Service to a color once all its pods are warm",
        description="Wait until every pod of the target color is Ready and warm, optionally compare "
        "its load-test p95 with the active color's, then switch the stable Service's selector "
        "(and the preview Service's back); optionally scale the old color down later.",
    )
    parser.add_argument("-n", "--namespace", required=True)
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
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_PROBE_PORT, help="the sidecar's port")
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
    api = parser.add_argument_group("API access (default: in-cluster, else the kubeconfig)")
    api.add_argument("--kubeconfig", type=Path, default=None)
    api.add_argument("--context", default=None)
    api.add_argument("--server", default=None, help="API server URL (with --token or --token-file)")
    api.add_argument("--token-file", type=Path, default=None, help="bearer token file for --server")
    api.add_argument("--insecure-skip-tls-verify", action="store_true")
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
