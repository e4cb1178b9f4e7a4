"""A loopback fake of the Kubernetes API, for `warmgate promote` and the readiness-gate pod condition.

It serves the real paths and bodies both use (the official client talks to it unchanged):

    GET   /api/v1/namespaces/{ns}/pods?labelSelector=...          PodList
    GET   /api/v1/namespaces/{ns}/pods/{name}                     Pod
    GET   /api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/{path} the pod's port, via the API server
    GET   /api/v1/namespaces/{ns}/services[/{name}]               ServiceList / Service
    GET   /apis/apps/v1/namespaces/{ns}/deployments?labelSelector DeploymentList
    GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}        Deployment
    GET   /apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}  HPA (`warmgate warmpool`)
    PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale  Scale
    PATCH {any of the objects above}[/status]                     the object, or its status subresource

A PATCH may be a strategic merge, JSON merge or JSON patch (anything else is 415). A strategic merge
merges the lists in MERGE_KEYS by their key (status.conditions by `type`, as the API does) and is
refused for any other list rather than guessed. The main resource ignores changes to `status`, the
status subresource changes to anything else. Like the real API server the fake answers errors as
`Status` objects, checks the bearer token (401), honours `dryRun=All` (validate, persist nothing),
rejects a patch whose metadata.resourceVersion is stale with 409, and answers `failures` injected
per method and path (every time, or once each from a list, to test retries). Every stored object,
and every object a patch produces, is validated against the real Kubernetes schemas with
kubernetes_validate (strict: unknown fields fail) plus the API's checks on conditions; a patch
producing an invalid object is answered 422 and recorded in `invalid`.

One `FakeKube.app()` serves two ways: `serve()` runs it on its own event loop in a thread, for
synchronous tests that call the official client directly (promote; `on_request` hooks change the
cluster between polls), and `serve_on_loop()` on the pytest event loop through pytest-aiohttp's
`aiohttp_server`, optionally over TLS, for async tests whose client runs in a worker thread (the
readiness gate).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

KUBE_VERSION = "1.32.0"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Lists a strategic merge patch merges item by item, by key (x-kubernetes-patch-merge-key in the API's
# schema); the fake implements these and refuses a strategic merge of any other list.
MERGE_KEYS: dict[tuple[str, ...], str] = {("status", "conditions"): "type"}
CONDITION_STATUSES = ("True", "False", "Unknown")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# Status reasons the API server gives with these codes (for injected failures).
REASONS = {
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
# The decoded request body, stored on the request by the middleware (which reads it to log it).
BODY = web.RequestKey("body", object)

# kind -> (path prefix, resource, apiVersion, list kind)
KINDS = {
    "Pod": ("/api/v1", "pods", "v1", "PodList"),
    "Service": ("/api/v1", "services", "v1", "ServiceList"),
    "Deployment": ("/apis/apps/v1", "deployments", "apps/v1", "DeploymentList"),
    "HorizontalPodAutoscaler": (
        "/apis/autoscaling/v2",
        "horizontalpodautoscalers",
        "autoscaling/v2",
        "HorizontalPodAutoscalerList",
    ),
}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    content_type: str  # the media type, without parameters
    body: Any
    status: int = 0
    authorization: str = ""


# (code, reason, message): a `Status` error the fake answers
Failure = tuple[int, str, str]


def failure(code: int, message: str = "injected failure") -> Failure:
    return code, REASONS.get(code, "InternalError"), message


class FakeKubeError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def validate_object(obj: Mapping[str, Any], version: str = KUBE_VERSION) -> None:
    """Raise ValueError naming the field when obj is not a valid object of its kind (strict), or
    its status.conditions break what the API server checks beyond the schema."""
    where = f"{obj.get('kind')} {(obj.get('metadata') or {}).get('name')} (Kubernetes {version})"
    try:
        kubernetes_validate.validate(dict(obj), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path)
        raise ValueError(f"{where}: {path or '<root>'}: {exc.message}") from None
    conditions = (obj.get("status") or {}).get("conditions") or []
    types = [c["type"] for c in conditions]
    if len(types) != len(set(types)):
        raise ValueError(f"{where}: status.conditions: duplicate types {types}")
    for condition in conditions:
        if condition["status"] not in CONDITION_STATUSES:
            raise ValueError(f"{where}: status.conditions: unsupported status {condition['status']!r}")
        for key, value in condition.items():
            if key.endswith("Time") and value is not None and not RFC3339.match(value):
                raise ValueError(f"{where}: status.conditions.{key}: not RFC 3339: {value!r}")


def merge_patch(target: Any, patch: Any, *, strategic: bool = False, path: tuple[str, ...] = ()) -> Any:
    """RFC 7386 JSON merge patch; with `strategic`, a Kubernetes strategic merge patch (the lists
    in MERGE_KEYS merge by key, any other list is refused)."""
    if strategic and isinstance(patch, list):
        return _merge_list(target, patch, path)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic, path=(*path, key))
    return result


def _merge_list(target: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = MERGE_KEYS.get(path)
    if key is None:
        raise FakeKubeError(
            415,
            "UnsupportedMediaType",
            f"the fake does not implement strategic merge of the list {'.'.join(path)}",
        )
    merged = copy.deepcopy(target) if isinstance(target, list) else []
    for item in patch:
        at = next((i for i, old in enumerate(merged) if old.get(key) == item[key]), len(merged))
        if at == len(merged):
            merged.append({})
        merged[at] = merge_patch(merged[at], item, strategic=True, path=path)
    return merged


def json_patch(document: Any, operations: list[Any]) -> Any:
    """RFC 6902: add, replace, remove, test (in place)."""
    for operation in operations:
        op = operation["op"]
        if op not in ("add", "replace", "remove", "test"):
            raise ValueError(f"the fake does not implement op {op!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent: Any = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last: Any = parts[-1]
        if isinstance(parent, list):
            last = len(parent) if last == "-" and op == "add" else int(last)
            if op == "add":
                parent.insert(last, operation["value"])
                continue
        elif op in ("replace", "remove", "test") and last not in parent:
            raise KeyError(operation["path"])
        if op in ("add", "replace"):
            parent[last] = operation["value"]
        elif op == "remove":
            del parent[last]
        elif parent[last] != operation["value"]:
            raise ValueError(f"test failed at {operation['path']}")
    return document


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
    # (method, path) -> a Failure answered instead of handling every such request, or a list of
    # them answered one per request (then requests are handled again); `failure()` builds one.
    failures: dict[tuple[str, str], Failure | list[Failure]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    # Called (on the serving loop, under the lock) after each request is answered.
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

    def pod_condition(self, namespace: str, name: str, condition_type: str) -> dict[str, Any] | None:
        """The pod's condition of this type (types are unique: validate_object checks it), or None."""
        conditions = self.get("Pod", namespace, name)["status"].get("conditions", [])
        return next((c for c in conditions if c["type"] == condition_type), None)

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
            app.router.add_patch(base + "/{name}/status", self._handler(self._patch_status, kind))
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
        authorization = request.headers.get("Authorization", "")
        record = Recorded(
            request.method,
            request.path,
            dict(request.query),
            _media_type(request),
            body,
            authorization=authorization,
        )
        with self.lock:
            try:
                # Like the API server, the scheme is case-insensitive (the in-cluster loader sends "bearer").
                scheme, _, token = authorization.partition(" ")
                if self.token is not None and (scheme.lower() != "bearer" or token.strip() != self.token):
                    raise FakeKubeError(401, "Unauthorized", "Unauthorized")
                injected = self.failures.get((request.method, request.path))
                if isinstance(injected, list):
                    injected = injected.pop(0) if injected else None
                if injected is not None:
                    raise FakeKubeError(*injected)
                response: web.StreamResponse = await handler(request)
            except FakeKubeError as exc:
                response = _status(exc)
            except web.HTTPException as exc:
                response = _status(FakeKubeError(exc.status, exc.reason, exc.text or exc.reason))
            record.status = response.status
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

    def _apply_patch(
        self, request: web.Request, current: dict[str, Any], keep: tuple[str, ...] = ("status",)
    ) -> dict[str, Any]:
        """The object the request's patch makes of `current`, checked as the API server checks it.
        `keep`: the top-level fields this endpoint leaves as they are (whatever the patch says)."""
        content_type, body = _media_type(request), request[BODY]
        try:
            if content_type == JSON_PATCH:
                if not isinstance(body, list):
                    raise TypeError("a JSON patch is a list of operations")
                result = json_patch(copy.deepcopy(current), body)
            elif content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
                if not isinstance(body, dict):
                    raise TypeError("the patch body must be a JSON object")
                result = merge_patch(current, body, strategic=content_type == STRATEGIC_MERGE_PATCH)
            else:
                accepted = f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}"
                raise FakeKubeError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types include: "
                    f"{accepted}",
                )
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            raise FakeKubeError(400, "BadRequest", f"cannot apply the patch: {exc!r}") from None
        if not isinstance(result.get("metadata"), dict):
            raise FakeKubeError(422, "Invalid", "metadata: Required value")
        wanted_version = result["metadata"].get("resourceVersion")
        if wanted_version is not None and wanted_version != current["metadata"]["resourceVersion"]:
            raise FakeKubeError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {current["kind"]} "{current["metadata"]["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        for key in ("name", "namespace", "uid"):
            if result["metadata"].get(key) != current["metadata"].get(key):
                raise FakeKubeError(422, "Invalid", f"metadata.{key}: field is immutable")
        if result.get("kind") != current["kind"] or result.get("apiVersion") != current["apiVersion"]:
            raise FakeKubeError(422, "Invalid", "kind and apiVersion are immutable")
        for key in keep:
            if key in current:
                result[key] = copy.deepcopy(current[key])
            else:
                result.pop(key, None)
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

    def _patch(
        self, request: web.Request, kind: str, namespace: str, keep: tuple[str, ...] = ("status",)
    ) -> web.StreamResponse:
        current = self._lookup(kind, namespace, request.match_info["name"])
        result = self._apply_patch(request, current, keep)
        self._persist(request, result, current)
        return web.json_response(result)

    def _patch_status(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        # The status subresource: a resourceVersion precondition counts, changes outside status do not.
        return self._patch(request, kind, namespace, keep=("metadata", "spec"))

    def _patch_scale(self, request: web.Request, kind: str, namespace: str) -> web.StreamResponse:
        name = request.match_info["name"]
        current = self._lookup(kind, namespace, name)
        scale = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: current["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
            "spec": {"replicas": current["spec"].get("replicas", 1)},
        }
        patched_scale = self._apply_patch(request, scale)
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


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip()


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
    """Serve from a thread (synchronous tests); the base URL."""
    server = FakeKubeServer(fake)
    try:
        yield server.start()
    finally:
        server.stop()


async def serve_on_loop(aiohttp_server: Callable[..., Awaitable[Any]], fake: FakeKube, **kwargs: Any) -> str:
    """Serve on the running (pytest) event loop with pytest-aiohttp's `aiohttp_server` fixture,
    which stops it after the test; kwargs go to it (`ssl=` for TLS). The base URL."""
    server = await aiohttp_server(fake.app(), **kwargs)
    return str(server.make_url("")).rstrip("/")


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
