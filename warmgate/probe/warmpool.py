"""`warmgate warmpool`: set a HorizontalPodAutoscaler's floor, so a known peak meets warm pods.

A CronJob the chart renders (values `warmPool.schedules`) runs this at each scheduled time:

1. read the HPA (autoscaling/v2) and refuse a floor above its spec.maxReplicas before patching
   (the API server's validation would refuse it too, with an error that names no chart value);
2. patch spec.minReplicas with a JSON patch whose first operation tests spec.maxReplicas, so the
   ceiling cannot change between the check and the write; the HPA controller's own writes (status,
   every few seconds) do not conflict with it, as a resourceVersion guard would. Idempotent: a floor
   already at the value is not patched at all;
3. optionally wait, with a deadline, until that many pods of the scale target are Ready and carry
   the warm condition the sidecar sets (`warmgate.dev/warm`, or Ready alone without the readiness
   gate), logging each change of progress.

Dry-run sends the patch with dryRun=All: validated by the API server, not persisted.
Failures raise WarmPoolError with an exit code: 1 nothing changed, 3 the floor is set but the pods
were not warm by the deadline (see EXIT_*). The CLI is warmpool_cli.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from warmgate.probe.kube import Kube, KubeError, format_selector
from warmgate.probe.promote_options import WARM_CONDITION
from warmgate.probe.promote_pods import pod_problem

log = logging.getLogger("warmgate.warmpool")

JSON_PATCH = "application/json-patch+json"

# Exit codes of `warmgate warmpool` (2, a usage error, comes from the CLI).
EXIT_DONE = 0
# Nothing changed: the HPA is missing, the identity may not read or patch it, the value is above
# maxReplicas, or the API failed.
EXIT_NOT_SET = 1
# The floor is set, but fewer pods than that were Ready and warm by the deadline.
EXIT_NOT_WARM_IN_TIME = 3

# A concurrent change of maxReplicas fails the patch's test operation; read again this many times.
PATCH_ATTEMPTS = 3


class WarmPoolError(Exception):
    """The floor was not set (EXIT_NOT_SET) or its pods were not warm in time (EXIT_NOT_WARM_IN_TIME)."""

    def __init__(self, message: str, *, exit_code: int = EXIT_NOT_SET) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class WarmPoolOptions:
    namespace: str
    hpa: str
    min_replicas: int
    wait: bool = False
    # Pods to count when waiting; None: the scale target Deployment's matchLabels (needs get on it).
    selector: Mapping[str, str] | None = None
    # None: Ready alone (charts without readinessGate.enabled: Ready already waits for /readyz).
    condition_type: str | None = WARM_CONDITION
    timeout_s: float = 900.0
    poll_interval_s: float = 5.0
    dry_run: bool = False


@dataclass
class WarmPoolResult:
    previous: int
    floor: int
    max_replicas: int
    patched: bool
    dry_run: bool
    # With wait: the pods Ready and warm when the wait ended.
    warm_pods: int | None = None


class HpaKube(Kube):
    """Kube plus the autoscaling/v2 calls warmpool makes (same raw JSON, timeouts and errors)."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        from kubernetes import client

        self.autoscaling = client.AutoscalingV2Api(api_client)

    def get_hpa(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get horizontalpodautoscaler {namespace}/{name}",
            self.autoscaling.read_namespaced_horizontal_pod_autoscaler,
            name,
            namespace,
        )

    def json_patch_hpa(
        self, namespace: str, name: str, operations: list[dict[str, Any]], *, dry_run: bool = False
    ) -> dict[str, Any]:
        return self._call(
            f"patch horizontalpodautoscaler {namespace}/{name}",
            self.autoscaling.patch_namespaced_horizontal_pod_autoscaler,
            name,
            namespace,
            operations,
            _content_type=JSON_PATCH,
            dry_run="All" if dry_run else None,
        )

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get deployment {namespace}/{name}", self.apps.read_namespaced_deployment, name, namespace
        )


def set_floor(
    kube: HpaKube,
    options: WarmPoolOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WarmPoolResult:
    """Set the HPA's minReplicas and optionally wait for that many warm pods; raises WarmPoolError."""
    ns, name, floor = options.namespace, options.hpa, options.min_replicas
    prefix = "dry run: " if options.dry_run else ""
    for attempt in range(1, PATCH_ATTEMPTS + 1):
        hpa = _read_hpa(kube, ns, name)
        spec = hpa.get("spec") or {}
        previous, ceiling = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        result = WarmPoolResult(
            previous=previous, floor=floor, max_replicas=ceiling, patched=False, dry_run=options.dry_run
        )
        if floor > ceiling:
            raise WarmPoolError(
                f"refused: minReplicas {floor} is above the maxReplicas {ceiling} of "
                f"horizontalpodautoscaler {ns}/{name} (raise autoscaling.maxReplicas first)"
            )
        if previous == floor:
            log.info("horizontalpodautoscaler %s/%s: minReplicas is already %d", ns, name, floor)
            break
        log.info(
            "%spatching horizontalpodautoscaler %s/%s: minReplicas %d -> %d (maxReplicas %d)",
            prefix, ns, name, previous, floor, ceiling,
        )  # fmt: skip
        operations = [
            # The ceiling checked above, tested in the same request: a concurrent change fails it.
            {"op": "test", "path": "/spec/maxReplicas", "value": ceiling},
            # `add` sets the field whether or not it is present (minReplicas is optional, default 1).
            {"op": "add", "path": "/spec/minReplicas", "value": floor},
        ]
        try:
            kube.json_patch_hpa(ns, name, operations, dry_run=options.dry_run)
        except KubeError as exc:
            # A failed test operation: 422 from the API server (some versions answer 400 or 409).
            if exc.status in (400, 409, 422) and attempt < PATCH_ATTEMPTS:
                log.warning("patch refused (%s): reading horizontalpodautoscaler %s/%s again", exc, ns, name)
                continue
            raise WarmPoolError(f"minReplicas not set: {exc}") from None
        result.patched = True
        break

    if options.wait and options.dry_run:
        log.info("dry run: not waiting for pods (the floor was not changed)")
    elif options.wait:
        selector = options.selector or _target_selector(kube, ns, hpa)
        try:
            result.warm_pods = wait_for_warm_pods(kube, ns, selector, options, clock=clock, sleep=sleep)
        except KubeError as exc:
            raise WarmPoolError(
                f"minReplicas is {floor}, but waiting for its pods failed: {exc}",
                exit_code=EXIT_NOT_WARM_IN_TIME,
            ) from None
    return result


def _read_hpa(kube: HpaKube, ns: str, name: str) -> dict[str, Any]:
    try:
        hpa = kube.get_hpa(ns, name)
    except KubeError as exc:
        if exc.status == 404:
            raise WarmPoolError(
                f"no horizontalpodautoscaler {ns}/{name} (is the chart's autoscaling.enabled on? with "
                "warmPool.keda.enabled KEDA owns the HPA and its cron triggers set the floor instead)"
            ) from None
        raise WarmPoolError(f"minReplicas not set: {exc}") from None
    if "maxReplicas" not in (hpa.get("spec") or {}):
        raise WarmPoolError(f"horizontalpodautoscaler {ns}/{name} has no spec.maxReplicas")
    return hpa


def _target_selector(kube: HpaKube, ns: str, hpa: Mapping[str, Any]) -> dict[str, str]:
    """The pod labels of the HPA's scale target, when it is a Deployment selecting by matchLabels."""
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    kind, name = target.get("kind"), target.get("name")
    if kind != "Deployment" or not name:
        raise WarmPoolError(f"the HPA scales {kind} {name}: pass --selector to name the pods to wait for")
    try:
        deployment = kube.get_deployment(ns, name)
    except KubeError as exc:
        raise WarmPoolError(
            f"minReplicas is set, but the pods to wait for are unknown: {exc} (pass --selector)",
            exit_code=EXIT_NOT_WARM_IN_TIME,
        ) from None
    selector = ((deployment.get("spec") or {}).get("selector")) or {}
    labels = dict(selector.get("matchLabels") or {})
    if selector.get("matchExpressions") or not labels:
        raise WarmPoolError(
            f"deployment {ns}/{name} selects its pods by expressions: pass --selector",
            exit_code=EXIT_NOT_WARM_IN_TIME,
        )
    return labels


def wait_for_warm_pods(
    kube: Kube,
    ns: str,
    selector: Mapping[str, str],
    options: WarmPoolOptions,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll until at least min_replicas pods are Ready and warm; the count. WarmPoolError at the deadline."""
    deadline = clock() + options.timeout_s
    wanted = options.min_replicas
    what = f"pods {format_selector(selector)}"
    warmth = f"Ready and {options.condition_type}" if options.condition_type else "Ready"
    last_summary = ""
    while True:
        pods = [
            p for p in kube.list_pods(ns, selector) if not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        problems = {p["metadata"]["name"]: pod_problem(p, options.condition_type) for p in pods}
        warm = sum(problem is None for problem in problems.values())
        if warm >= wanted:
            log.info("%s: %d/%d %s", what, warm, wanted, warmth)
            return warm
        waiting = sorted((n, p) for n, p in problems.items() if p is not None)
        if waiting:
            blocker = f"pod {waiting[0][0]}: {waiting[0][1]}"
            if len(waiting) > 1:
                blocker += f" (+{len(waiting) - 1} more not warm)"
        else:
            blocker = f"{wanted - len(pods)} more pods to be created"
        summary = f"{warm}/{wanted} {warmth}; waiting on {blocker}"
        if summary != last_summary:
            log.info("%s: %s", what, summary)
            last_summary = summary
        if clock() >= deadline:
            raise WarmPoolError(
                f"minReplicas is {wanted}, but after {options.timeout_s:g}s only {summary}",
                exit_code=EXIT_NOT_WARM_IN_TIME,
            )
        sleep(min(options.poll_interval_s, max(deadline - clock(), 0.0)))
