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

Where each part lives: this module runs the steps and owns the Services (steps 1, 4, 5);
promote_pods waits for the target pods and compares p95 (steps 2, 3); promote_options holds
the options, names and exit codes; promote_cli parses `warmgate promote` and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from warmgate.probe.kube import Kube, KubeError
from warmgate.probe.promote_options import (
    EXIT_HALF_SWITCHED,
    EXIT_SCALE_DOWN_FAILED,
    REPLICAS_ANNOTATION,
    PromoteError,
    PromoteOptions,
)
from warmgate.probe.promote_pods import compare_p95, wait_until_warm

log = logging.getLogger("warmgate.promote")


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
