"""A loopback fake of the Kubernetes API for `warmgate promote` tests.

It serves the real paths and bodies promote uses (the official client talks to it unchanged):

    GET   /api/v1/namespaces/{ns}/pods?labelSelector=...          PodList
    GET   /api/v1/namespaces/{ns}/pods/{name}                     Pod
    GET   /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path} the pod's port, via the API server
    GET   /api/v1/namespaces/{ns}/services[/{name}]               ServiceList / Service
    PATCH /api/v1/namespaces/{ns}/services/{name}                 merge or strategic merge patch
    GET   /apis/apps/v1/namespaces/{ns}/deployments?labelSelector DeploymentList
    GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}        Deployment
    PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}[/scale]

Like the real API server it answers errors as `Status` objects, checks the bearer token, honours
`dryRun=All` (validate, persist nothing), rejects a patch whose metadata.resourceVersion is stale
with 409, and rejects unknown patch content types with 415. Every stored object, and every object a
patch produces, is validated against the real Kubernetes schemas with kubernetes_validate (strict:
unknown fields fail); a patch producing an invalid object is answered 422 and recorded in `invalid`.

The app runs on its own event loop in a thread (`FakeKubeServer`), because the official client is
synchronous: a test calls promote directly, and `on_request` hooks change the cluster between polls.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

KUBE_VERSION = "1.32.0"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# The decoded request body, stored on the request by the middleware (which reads it to log it).
BODY = web.RequestKey("body", object)

# kind -> (path prefix, resource, apiVersion, list kind)
KINDS = {
    "Pod": ("/api/v1", "pods", "v1", "PodList"),
    "Service": ("/api/v1", "services", "v1", "ServiceList"),
    "Deployment": ("/apis/apps/v1", "deployments", "apps/v1", "DeploymentList"),
}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int = 0


class FakeKubeError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def validate_object(obj: Mapping[str, Any], version: str = KUBE_VERSION) -> None:
    """Raise ValueError naming the field when obj is not a valid object of its kind (strict)."""
    try:
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        name = (obj.get("metadata") or {}).get("name")
        raise ValueError(
            f"{obj.get('kind')} {name} (Kubernetes {version}): {path or '<root>'}: {exc.message}"
        ) from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _has_list(node: Any) -> bool:
    if isinstance(node, list):
        return True
    if isinstance(node, dict):
        return any(_has_list(value) for value in node.values())
    return False


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Equality-based label selectors: k=v, k==v, k!=v, k, !k."""
    terms: list[tuple[str, str, str | None]] = []
    for raw in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key, value))
        elif "==" in raw or "=" in raw:
            key, value = raw.split("==", 1) if "==" in raw else raw.split("=", 1)
            terms.append(("=", key, value))
        elif raw.startswith("!"):
            terms.append(("!", raw[1:], None))
        elif any(c in raw for c in " ()"):
            raise FakeKubeError(
                400, "BadRequest", f"unable to parse requirement: {raw!r} (set-based selectors are not faked)"
            )
        else:
            terms.append(("exists", raw, None))
    return terms


def matches(labels: Mapping[str, str], terms: list[tuple[str, str, str | None]]) -> bool:
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


@dataclass
class FakeKube:
    """The cluster state and the request log. Thread-safe: tests and the server thread share it."""

    token: str | None = "test-token"
    version: str = KUBE_VERSION
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # (namespace, pod, port) -> /metrics text served through the pod proxy
    pod_metrics: dict[tuple[str, str, int], str] = field(default_factory=dict)
    # (method, path) -> (code, reason, message): answered instead of handling the request
    failures: dict[tuple[str, str], tuple[int, str, str]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    # Called (in the server thread, under the lock) after each request is answered.
    on_request: list[Callable[[FakeKube, Recorded], None]] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _resource_version: int = 100

    # ---- state ------------------------------------------------------------------------------
    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a valid object (as the API would after a create)."""
        validate_object(obj, self.version)
        with self.lock:
            stored = copy.deepcopy(obj)
            meta = stored.setdefault("metadata", {})
            meta.setdefault("namespace", "default")
            meta.setdefault("uid", f"uid-{meta['name']}")
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_version()
            self.objects[(stored["kind"], meta["namespace"], meta["name"])] = stored
            return copy.deepcopy(stored)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self.objects[(kind, namespace, name)])

    def update(self, kind: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Change a stored object in place (as a controller would), revalidated, new resourceVersion."""
        with self.lock:
            obj = copy.deepcopy(self.objects[(kind, namespace, name)])
            change(obj)
            validate_object(obj, self.version)
            obj["metadata"]["resourceVersion"] = self._next_version()
            self.objects[(kind, namespace, name)] = obj

    def set_pod_condition(self, namespace: str, name: str, condition_type: str, status: bool) -> None:
        def change(pod: dict[str, Any]) -> None:
            conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != condition_type]
            conditions.append(
                {
                    "type": condition_type,
                    "status": "True" if status else "False",
                    "lastTransitionTime": _now(),
                }
            )
            pod["status"]["conditions"] = conditions

        self.update("Pod", namespace, name, change)

    def patches(self, path: str | None = None) -> list[Recorded]:
        """The PATCH requests received, all or those of one exact path."""
        with self.lock:
            return [r for r in self.requests if r.method == "PATCH" and path in (None, r.path)]

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    # ---- HTTP -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for kind, (prefix, resource, _api_version, _list_kind) in KINDS.items():
            base = f"{prefix}/namespaces/{{namespace}}/{resource}"
            app.router.add_get(base, self._handler(self._list, kind))
            app.router.add_get(base + "/{name}", self._handler(self._get, kind))
            app.router.add_patch(base + "/{name}", self._handler(self._patch, kind))
        app.router.add_get("/api/v1/namespaces/{namespace}/pods/{target}/proxy/{path:.*}", self._proxy)
        app.router.add_patch(
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale",
            self._handler(self._patch_scale, "Deployment"),
        )
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        body_bytes = await request.read()
        try:
            body = json.loads(body_bytes) if body_bytes else None
        except ValueError:
            body = body_bytes.decode("utf-8", "replace")
        request[BODY] = body
        record = Recorded(
            request.method, request.path, dict(request.query), request.headers.get("Content-Type", ""), body
        )
        try:
            if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
                raise FakeKubeError(401, "Unauthorized", "Unauthorized")
            failure = self.failures.get((request.method, request.path))
            if failure is not None:
                raise FakeKubeError(*failure)
            with self.lock:
                response: web.StreamResponse = await handler(request)
        except FakeKubeError as exc:
            response = _status(exc)
        except web.HTTPException as exc:
            response = _status(FakeKubeError(exc.status, exc.reason, exc.text or exc.reason))
        record.status = response.status
        with self.lock:
            self.requests.append(record)
            for hook in list(self.on_request):
                hook(self, record)
        return response

    def _handler(self, method: Callable[..., web.StreamResponse], kind: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return method(request, kind, request.match_info["namespace"])

        return handle

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise FakeKubeError(404, "NotFound", f'{KINDS[kind][1]} "{name}" not found')
        return obj

    def _list(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        terms = parse_selector(request.query.get("labelSelector", ""))
        items = []
        for (k, ns, _name), obj in sorted(self.objects.items()):
            if k == kind and ns == namespace and matches(obj["metadata"].get("labels") or {}, terms):
                item = copy.deepcopy(obj)
                # The API server leaves kind and apiVersion out of a typed list's items.
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        return web.json_response(
            {
                "kind": KINDS[kind][3],
                "apiVersion": KINDS[kind][2],
                "metadata": {"resourceVersion": str(self._resource_version)},
                "items": items,
            }
        )

    def _get(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        return web.json_response(self._lookup(kind, namespace, request.match_info["name"]))

    def _apply_patch(self, request: web.Request, current: dict[str, Any], body: Any) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
            raise FakeKubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({content_type})",
            )
        if not isinstance(body, dict):
            raise FakeKubeError(400, "BadRequest", "the patch body must be a JSON object")
        if content_type == STRATEGIC_MERGE_PATCH and _has_list(body):
            raise FakeKubeError(
                415, "UnsupportedMediaType", "the fake does not implement strategic merge of lists"
            )
        wanted_version = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_version is not None and wanted_version != current["metadata"]["resourceVersion"]:
            raise FakeKubeError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {current["kind"]} "{current["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        result = merge_patch(current, body)
        for key in ("name", "namespace", "uid"):
            if result["metadata"].get(key) != current["metadata"].get(key):
                raise FakeKubeError(422, "Invalid", f"metadata.{key}: field is immutable")
        if result.get("kind") != current["kind"] or result.get("apiVersion") != current["apiVersion"]:
            raise FakeKubeError(422, "Invalid", "kind and apiVersion are immutable")
        try:
            validate_object(result, self.version)
        except ValueError as exc:
            self.invalid.append(str(exc))
            raise FakeKubeError(422, "Invalid", str(exc)) from None
        return result

    def _persist(self, request: web.Request, result: dict[str, Any], current: dict[str, Any]) -> bool:
        dry_run = request.query.get("dryRun")
        if dry_run not in (None, "All"):
            raise FakeKubeError(400, "BadRequest", f"Invalid dry run value {dry_run!r}")
        if dry_run == "All":
            return False
        if result.get("spec") != current.get("spec"):
            result["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        result["metadata"]["resourceVersion"] = self._next_version()
        meta = result["metadata"]
        self.objects[(result["kind"], meta["namespace"], meta["name"])] = result
        return True

    def _patch(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        current = self._lookup(kind, namespace, request.match_info["name"])
        result = self._apply_patch(request, current, request[BODY])
        self._persist(request, result, current)
        return web.json_response(result)

    def _patch_scale(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        name = request.match_info["name"]
        current = self._lookup(kind, namespace, name)
        scale = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: current["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
            "spec": {"replicas": current["spec"].get("replicas", 1)},
        }
        patched_scale = self._apply_patch(request, scale, request[BODY])
        result = copy.deepcopy(current)
        result["spec"]["replicas"] = patched_scale["spec"]["replicas"]
        validate_object(result, self.version)
        self._persist(request, result, current)
        patched_scale["metadata"]["resourceVersion"] = result["metadata"]["resourceVersion"]
        return web.json_response(patched_scale)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        namespace, target = request.match_info["namespace"], request.match_info["target"]
        name, _, port = target.partition(":")
        self._lookup("Pod", namespace, name)
        text = self.pod_metrics.get((namespace, name, int(port or 80)))
        if text is None or request.match_info["path"] != "metrics":
            raise FakeKubeError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp {target}: connection refused",
            )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")


def _status(exc: FakeKubeError) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": exc.message,
            "reason": exc.reason,
            "code": exc.code,
        },
        status=exc.code,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKubeServer:
    """Serves a FakeKube on 127.0.0.1 (port 0, read back) from an event loop in its own thread."""

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-kube", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self.url

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.fake.app(), access_log=None)
        await self._runner.setup()
        # Bind port 0 first and read the port back, then serve on that socket.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextmanager
def serve(fake: FakeKube) -> Iterator[str]:
    server = FakeKubeServer(fake)
    try:
        yield server.start()
    finally:
        server.stop()


# ---- objects as the chart renders them (labels) and the cluster fills them in (status) -------------

APP_LABELS = {"app.kubernetes.io/name": "warmgate", "warmgate.dev/app": "demo"}


def service(name: str, color: str, namespace: str = "default", role: str = "stable") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**APP_LABELS, "warmgate.dev/service-role": role},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {**APP_LABELS, "warmgate.dev/color": color},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def color_labels(color: str) -> dict[str, str]:
    return {**APP_LABELS, "app.kubernetes.io/instance": f"demo-{color}", "warmgate.dev/color": color}


def deployment(
    color: str, replicas: int = 2, namespace: str = "default", *, rolled_out: bool = True
) -> dict[str, Any]:
    labels = color_labels(color)
    selector = {
        k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "warmgate.dev/color")
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"demo-{color}-warmgate",
            "namespace": namespace,
            "labels": labels,
            "generation": 1,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "readinessGates": [{"conditionType": "warmgate.dev/warm"}],
                    "containers": [{"name": "model", "image": "warmgate/warmgate:0.1.0"}],
                },
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas if rolled_out else 0,
            "readyReplicas": replicas if rolled_out else 0,
            "availableReplicas": replicas if rolled_out else 0,
        },
    }


def pod(
    color: str,
    index: int,
    *,
    ready: bool = True,
    warm: bool | None = True,
    phase: str = "Running",
    namespace: str = "default",
) -> dict[str, Any]:
    conditions = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {
            "type": "ContainersReady",
            "status": "True" if ready else "False",
            "lastTransitionTime": "2026-01-01T00:00:01Z",
        },
        {
            "type": "Ready",
            "status": "True" if ready and warm is not False else "False",
            "lastTransitionTime": "2026-01-01T00:00:01Z",
            **(
                {}
                if ready and warm is not False
                else {"reason": "ReadinessGatesNotReady" if ready else "ContainersNotReady"}
            ),
        },
    ]
    if warm is not None:
        conditions.append(
            {
                "type": "warmgate.dev/warm",
                "status": "True" if warm else "False",
                "reason": "Warm" if warm else "Warming",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"demo-{color}-warmgate-{index}",
            "namespace": namespace,
            "labels": color_labels(color),
        },
        "spec": {
            "readinessGates": [{"conditionType": "warmgate.dev/warm"}],
            "containers": [{"name": "model", "image": "warmgate/warmgate:0.1.0"}],
        },
        "status": {"phase": phase, "podIP": f"10.0.0.{index + 10}", "conditions": conditions},
    }


def metrics_text(p95_s: float | None) -> str:
    """A sidecar /metrics exposition with the load-test latency summary."""
    lines = [
        "# HELP warmgate_ready 1 when the ready marker exists",
        "# TYPE warmgate_ready gauge",
        "warmgate_ready 1.0",
        "# HELP warmgate_loadtest_latency_seconds Load-test latency percentiles",
        "# TYPE warmgate_loadtest_latency_seconds gauge",
    ]
    if p95_s is not None:
        for quantile, factor in (("0.5", 0.5), ("0.9", 0.9), ("0.95", 1.0), ("0.99", 1.2), ("1", 1.5)):
            lines.append(f'warmgate_loadtest_latency_seconds{{quantile="{quantile}"}} {p95_s * factor!r}')
    return "\n".join(lines) + "\n"
