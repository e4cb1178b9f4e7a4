"""A loopback fake of the one Kubernetes API call the readiness gate makes.

`PATCH /api/v1/namespaces/{namespace}/pods/{name}/status` with the API server's real patch
content types (strategic merge, JSON merge, JSON patch; anything else is 415), bearer-token auth
(401), unknown pods (404), and `Status` error bodies. Every resulting Pod is validated against the
real Kubernetes schema (kubernetes-validate, strict) and refused with 422 when invalid, so a body
the real API server would reject fails here too. Errors can be injected to test retries.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
from aiohttp import web

KUBERNETES_VERSION = "1.32.0"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Lists that strategic merge patches merge by key instead of replacing (from the Pod's Go types).
MERGE_KEYS = {
    ("status", "conditions"): "type",
    ("status", "containerStatuses"): "name",
    ("status", "initContainerStatuses"): "name",
}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def initial_pod(namespace: str, name: str, condition_type: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": "0c9f7a8e", "resourceVersion": "100"},
        "spec": {
            "containers": [
                {"name": "model", "image": "warmgate:test"},
                {"name": "probe", "image": "warmgate:test"},
            ],
            "readinessGates": [{"conditionType": condition_type}],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z"},
                {"type": "Ready", "status": "False", "lastTransitionTime": "2024-05-01T10:00:00Z"},
            ],
        },
    }


@dataclass
class Request:
    path: str
    content_type: str
    authorization: str
    body: Any


@dataclass
class FakeKubeAPI:
    token: str = "test-token"
    namespace: str = "ml"
    name: str = "model-0"
    condition_type: str = "warmgate.dev/warm"
    # Statuses to answer, one per request, before behaving; `fail_with` answers every request.
    failures: list[int] = field(default_factory=list)
    fail_with: int | None = None
    requests: list[Request] = field(default_factory=list)
    pod: dict[str, Any] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        self.pod = initial_pod(self.namespace, self.name, self.condition_type)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_patch("/api/v1/namespaces/{namespace}/pods/{name}/status", self._patch_status)
        return app

    def condition(self) -> dict[str, Any] | None:
        conditions = self.pod["status"].get("conditions", [])
        matching = [c for c in conditions if c["type"] == self.condition_type]
        assert len(matching) <= 1, conditions
        return matching[0] if matching else None

    async def _patch_status(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        self.requests.append(
            Request(request.path, content_type, request.headers.get("Authorization", ""), body)
        )
        # Like the API server: the scheme is case-insensitive (the in-cluster loader sends "bearer").
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            return status_error(401, "Unauthorized", "Unauthorized")
        if self.failures:
            return status_error(self.failures.pop(0), "InternalError", "injected failure")
        if self.fail_with is not None:
            return status_error(self.fail_with, _reason(self.fail_with), "injected failure")
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if (namespace, name) != (self.namespace, self.name):
            return status_error(404, "NotFound", f'pods "{name}" not found')
        if isinstance(body, bytes):
            return status_error(400, "BadRequest", "the body is not JSON")
        try:
            if content_type == STRATEGIC:
                patched = strategic_merge(copy.deepcopy(self.pod), body)
            elif content_type == MERGE:
                patched = merge_patch(copy.deepcopy(self.pod), body)
            elif content_type == JSON_PATCH:
                patched = json_patch(copy.deepcopy(self.pod), body)
            else:
                accepted = f"{JSON_PATCH}, {MERGE}, {STRATEGIC}"
                message = (
                    f"the body of the request was in an unknown format - accepted media types: {accepted}"
                )
                return status_error(415, "UnsupportedMediaType", message)
        except (TypeError, KeyError, IndexError, ValueError) as exc:
            return status_error(400, "BadRequest", f"cannot apply the patch: {exc}")
        # The status subresource ignores everything but the status.
        patched["metadata"], patched["spec"] = self.pod["metadata"], self.pod["spec"]
        problem = invalid(patched)
        if problem is not None:
            return status_error(422, "Invalid", problem)
        patched["metadata"] = {
            **patched["metadata"],
            "resourceVersion": str(int(patched["metadata"]["resourceVersion"]) + 1),
        }
        self.pod = patched
        return web.json_response(self.pod)


def invalid(pod: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    for condition in pod["status"].get("conditions", []):
        if condition["status"] not in ("True", "False", "Unknown"):
            return f"status.conditions: unsupported status {condition['status']!r}"
        for key in ("lastTransitionTime", "lastProbeTime"):
            if condition.get(key) is not None and not RFC3339.match(condition[key]):
                return f"status.conditions.{key}: not RFC 3339: {condition[key]!r}"
    types = [c["type"] for c in pod["status"].get("conditions", [])]
    if len(types) != len(set(types)):
        return f"status.conditions: duplicate types {types}"
    return None


def status_error(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _reason(code: int) -> str:
    return {403: "Forbidden", 404: "NotFound", 409: "Conflict", 429: "TooManyRequests"}.get(
        code, "InternalError"
    )


def strategic_merge(
    target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise TypeError("a strategic merge patch is a JSON object")
    for key, value in patch.items():
        here = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = strategic_merge(target[key], value, here)
        elif isinstance(value, list) and here in MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = MERGE_KEYS[here]
            merged = list(target[key])
            for item in value:
                index = next(
                    (i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None
                )
                if index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = strategic_merge(dict(merged[index]), item, here)
            target[key] = merged
        else:
            target[key] = copy.deepcopy(value)
    return target


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902: add, replace, remove, test."""
    if not isinstance(operations, list):
        raise TypeError("a JSON patch is a list of operations")
    for operation in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]]
        parent: Any = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        op = operation["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op == "add":
                parent.insert(index, operation["value"])
            elif op == "replace":
                parent[index] = operation["value"]
            elif op == "remove":
                del parent[index]
            elif op == "test" and parent[index] != operation["value"]:
                raise ValueError(f"test failed at {operation['path']}")
        elif op in ("add", "replace"):
            if op == "replace" and last not in parent:
                raise KeyError(operation["path"])
            parent[last] = operation["value"]
        elif op == "remove":
            del parent[last]
        elif op == "test" and parent.get(last) != operation["value"]:
            raise ValueError(f"test failed at {operation['path']}")
    return document
