"""`warmgate promote`, steps 2 and 3: wait until every pod of the target color is rolled out,
Ready and warm, and compare its load-test p95 (from the sidecars' /metrics, read through the API
server's pod proxy) with the active color's."""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from warmgate.probe.kube import Kube
from warmgate.probe.promote_options import PromoteError, PromoteOptions

log = logging.getLogger("warmgate.promote")

# The metric and quantile the sidecar exports the load-test p95 as (warmgate/probe/metrics.py).
P95_METRIC = "warmgate_loadtest_latency_seconds"
P95_QUANTILE = "0.95"


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
