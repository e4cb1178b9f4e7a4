"""Optional pod readiness gate: a pod condition (default `warmgate.dev/warm`) that follows /readyz.

A pod that lists the condition under `spec.readinessGates` is Ready only while the condition is
True, so Services and load balancers that honour readiness gates wait for the warmup even when
they do not look at container probes. The sidecar sets it True when the ready marker appears and
False on drain, when readiness is lost, and when the sidecar itself stops.

The official `kubernetes` client is synchronous and heavy: it is imported only when the feature
is on, and every call runs in one worker thread so it never blocks the probe's event loop. API
errors are retried with exponential backoff and logged once per streak; nothing here raises into
the probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warmgate.errors import ConfigError
from warmgate.probe.evaluator import Verdict

if TYPE_CHECKING:
    from kubernetes.client import Configuration

log = logging.getLogger("warmgate.probe.gate")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# (connect, read) seconds for one API call; the API server answers a status patch in milliseconds,
# and a hung call must not hold the worker thread past the pod's termination grace period.
REQUEST_TIMEOUT_S = (2.0, 5.0)
# Retry quickly after a blip, but back off to a ceiling that cannot add load to a struggling API
# server (every replica of a large deployment runs this loop).
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
# How often the readiness verdict is re-evaluated for the condition (one cached server check).
FOLLOW_INTERVAL_S = 1.0
# Condition messages are for `kubectl describe`; keep them short.
MESSAGE_LIMIT = 256

# Verdict codes (probe.evaluator) -> one-word CamelCase condition reasons.
REASONS = {
    "ready": "Warm",
    "not-ready": "Warming",
    "failed": "WarmupFailed",
    "draining": "Draining",
    "server-unhealthy": "ServerUnhealthy",
    "shutting-down": "ProbeShuttingDown",
}


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> PodRef:
        """POD_NAME and POD_NAMESPACE from the downward API; the namespace may come from the
        service account instead. Raises ConfigError (one line) when the pod cannot be named."""
        name = environ.get("POD_NAME", "")
        namespace = environ.get("POD_NAMESPACE", "")
        if not namespace:
            with contextlib.suppress(OSError):
                namespace = (service_account_dir / "namespace").read_text().strip()
        if not name or not namespace:
            raise ConfigError(
                "probe.readiness_gate.enabled needs the pod's name and namespace: set POD_NAME and "
                "POD_NAMESPACE from the downward API (fieldRef metadata.name / metadata.namespace)"
            )
        return cls(namespace, name)


@dataclass(frozen=True)
class Condition:
    status: bool
    reason: str
    message: str

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> Condition:
        reason = REASONS.get(verdict.code, "NotWarm")
        message = (
            verdict.reason
            if len(verdict.reason) <= MESSAGE_LIMIT
            else verdict.reason[: MESSAGE_LIMIT - 3] + "..."
        )
        return cls(verdict.ok, reason, message)


def condition_patch(condition_type: str, condition: Condition, now: datetime.datetime) -> dict[str, Any]:
    """A strategic-merge patch of pods/status: conditions merge by `type`, others stay as they are."""
    return {
        "status": {
            "conditions": [
                {
                    "type": condition_type,
                    "status": "True" if condition.status else "False",
                    "reason": condition.reason,
                    "message": condition.message,
                    # The condition is patched only when its status changes, so now is the transition.
                    "lastTransitionTime": now.astimezone(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%SZ"
                    ),
                }
            ]
        }
    }


def check_in_cluster(environ: Mapping[str, str]) -> None:
    """Fail fast, before importing the client, when the sidecar is plainly not in a cluster."""
    if not environ.get("KUBERNETES_SERVICE_HOST") or not environ.get("KUBERNETES_SERVICE_PORT"):
        raise ConfigError(
            "probe.readiness_gate.enabled needs the in-cluster API (KUBERNETES_SERVICE_HOST/PORT are not set)"
        )


def in_cluster_configuration(
    environ: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> Configuration:
    """The client configuration the official in-cluster loader builds (service-account token,
    refreshed as the kubelet rotates it, and the cluster CA)."""
    # Lazy: the client is heavy and only needed with the gate on.
    from kubernetes.client import Configuration
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = Configuration()
    InClusterConfigLoader(
        token_filename=str(service_account_dir / "token"),
        cert_filename=str(service_account_dir / "ca.crt"),
        environ=environ,
    ).load_and_set(configuration)
    return configuration


class PodConditionPatcher:
    """Sets the condition with one PATCH of pods/status. Synchronous: call it in a worker thread."""

    def __init__(
        self,
        configuration: Callable[[], Configuration],
        pod: PodRef,
        condition_type: str,
        *,
        request_timeout_s: tuple[float, float] = REQUEST_TIMEOUT_S,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    ) -> None:
        self._configuration = configuration
        self.pod = pod
        self.condition_type = condition_type
        self.request_timeout_s = request_timeout_s
        self._now = now
        self._api: Any = None

    def __call__(self, condition: Condition) -> None:
        from kubernetes.client import ApiClient, CoreV1Api

        if self._api is None:
            # Built on first use, in the worker thread: importing and configuring the client
            # costs CPU the probe's event loop should not wait for.
            self._api = CoreV1Api(ApiClient(self._configuration()))
        response = self._api.patch_namespaced_pod_status(
            self.pod.name,
            self.pod.namespace,
            condition_patch(self.condition_type, condition, self._now()),
            _content_type=STRATEGIC_MERGE_PATCH,
            _request_timeout=self.request_timeout_s,
            # The pod is not needed back: skip decoding it (and any field a newer API adds).
            _preload_content=False,
        )
        response.read()
        response.release_conn()

    def close(self) -> None:
        if self._api is not None:
            self._api.api_client.close()


def describe_api_error(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        text = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".rstrip()
        if status == 403:
            text += " (the pod's service account needs `patch` on `pods/status`)"
        return text
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


class ReadinessGate:
    """Drives the pod condition towards the latest desired value.

    Only status changes (True/False) are sent; a new reason with the same status is not worth an
    API call. A failed call is retried with exponential backoff, and at once when the desired
    status changes meanwhile (a drain must not wait out a 30 s backoff).
    """

    def __init__(
        self,
        apply: Callable[[Condition], None],
        *,
        condition_type: str,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._apply = apply
        self._close_apply = close
        self.condition_type = condition_type
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness-gate")
        self.desired: Condition | None = None
        self.applied: Condition | None = None
        self.attempts = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="readiness-gate")

    def set_desired(self, condition: Condition) -> None:
        previous = self.desired
        self.desired = condition
        if previous is None or previous.status != condition.status:
            self._wake.set()
        if self._in_sync():
            self._synced.set()
        else:
            self._synced.clear()

    async def settle(self, timeout_s: float) -> bool:
        """Wait until the desired status is applied; False when the time ran out."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._close_apply is not None:
            # In the worker thread, after any call still running there (it ends by its own
            # request timeout); the probe does not wait for either.
            self._executor.submit(self._close_quietly, self._close_apply)
        self._executor.shutdown(wait=False)

    @staticmethod
    def _close_quietly(close: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):
            close()

    def _in_sync(self) -> bool:
        return (
            self.desired is not None
            and self.applied is not None
            and self.applied.status == self.desired.status
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.backoff_initial_s
        failing_since: int | None = None
        while True:
            desired = self.desired
            if desired is None or self._in_sync():
                self._wake.clear()
                await self._wake.wait()
                continue
            self.attempts += 1
            try:
                await loop.run_in_executor(self._executor, self._apply, desired)
            except Exception as exc:
                self.failures += 1
                if failing_since is None:
                    failing_since = self.attempts
                    log.warning(
                        "pod condition %s=%s not set: %s; retrying with backoff",
                        self.condition_type,
                        desired.status,
                        describe_api_error(exc),
                    )
                else:
                    log.debug("pod condition retry %d failed: %s", self.attempts, describe_api_error(exc))
                self._wake.clear()
                # Jitter keeps the replicas of a deployment from retrying in lockstep.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self.applied = desired
            delay = self.backoff_initial_s
            retried = f" after {self.attempts - failing_since} failed attempts" if failing_since else ""
            failing_since = None
            log.info(
                "pod condition %s=%s (%s: %s)%s",
                self.condition_type,
                desired.status,
                desired.reason,
                desired.message,
                retried,
            )
            if self._in_sync():
                self._synced.set()


async def follow_readiness(
    readiness: Callable[[], Awaitable[Verdict]], gate: ReadinessGate, interval_s: float = FOLLOW_INTERVAL_S
) -> None:
    """Feed the readiness verdict to the gate, forever (cancel to stop)."""
    while True:
        gate.set_desired(Condition.from_verdict(await readiness()))
        await asyncio.sleep(interval_s)


def check_gate_environment(
    environ: Mapping[str, str], service_account_dir: Path = SERVICE_ACCOUNT_DIR
) -> None:
    """What `build_gate` refuses, asked before anything starts: raises ConfigError (one line) when
    the pod or the in-cluster API cannot be named."""
    PodRef.from_environment(environ, service_account_dir)
    check_in_cluster(environ)


def build_gate(
    condition_type: str,
    environ: Mapping[str, str],
    *,
    configuration: Callable[[], Configuration] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    backoff_initial_s: float = BACKOFF_INITIAL_S,
    backoff_max_s: float = BACKOFF_MAX_S,
) -> ReadinessGate:
    """The gate for this pod. Raises ConfigError when the pod or the API cannot be named; errors
    of the API itself (missing token, TLS, RBAC, outages) are retried and logged instead."""
    pod = PodRef.from_environment(environ, service_account_dir)
    if configuration is None:
        check_in_cluster(environ)

        def in_cluster() -> Configuration:
            return in_cluster_configuration(environ, service_account_dir)

        configuration = in_cluster
    patcher = PodConditionPatcher(configuration, pod, condition_type)
    log.info("readiness gate on: pod %s/%s, condition %s", pod.namespace, pod.name, condition_type)
    return ReadinessGate(
        patcher,
        condition_type=condition_type,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        close=patcher.close,
    )
