"""A thin, JSON-in JSON-out layer over the official `kubernetes` client (promote, warmpool).

Responses are read raw (`_preload_content=False`) and decoded as the API's own JSON, so the code
works on the wire format the API documents rather than on one client release's model classes
(they changed shape between client releases). The client is imported lazily: it is the `k8s` extra.

Where the client comes from (`connect`): an explicit server URL and token (tests point this at a
loopback fake), else a kubeconfig file and context, else the in-cluster service account, else the
default kubeconfig.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmgate.config import ConfigError

MERGE_PATCH = "application/merge-patch+json"
# (connect, read) seconds for one API call: every call here is a small read or a one-field patch.
REQUEST_TIMEOUT_S = (5.0, 30.0)


class KubeError(Exception):
    """An API call failed; the message names the call and the API's own reason."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Connection:
    """How to reach the API server. All None: in-cluster if there, else the default kubeconfig."""

    server: str | None = None
    token: str | None = None
    kubeconfig: Path | None = None
    context: str | None = None
    insecure_skip_tls_verify: bool = False


def connect(connection: Connection, environ: Mapping[str, str] | None = None) -> Kube:
    env = os.environ if environ is None else environ
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError("this command needs the kubernetes client: pip install 'warmgate[k8s]'") from None

    configuration = client.Configuration()
    if connection.server is not None:
        configuration.host = connection.server.rstrip("/")
    else:
        try:
            if connection.kubeconfig is not None or connection.context is not None:
                config.load_kube_config(
                    config_file=str(connection.kubeconfig) if connection.kubeconfig else None,
                    context=connection.context,
                    client_configuration=configuration,
                )
            elif env.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise ConfigError(f"cannot configure the Kubernetes client: {exc}") from None
    # Applied after loading, so the flag works for a kubeconfig and in-cluster too, not just --server.
    if connection.insecure_skip_tls_verify:
        configuration.verify_ssl = False
    api_client = client.ApiClient(configuration)
    if connection.server is not None and connection.token:
        api_client.set_default_header("Authorization", f"Bearer {connection.token}")
    return Kube(api_client)


class Kube:
    """The handful of calls promote makes (warmpool's HpaKube adds its own). Synchronous; every
    call is bounded by a timeout."""

    def __init__(self, api_client: Any, request_timeout_s: tuple[float, float] = REQUEST_TIMEOUT_S) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.request_timeout_s = request_timeout_s

    def close(self) -> None:
        self.api_client.close()

    def __enter__(self) -> Kube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, method: Any, *args: Any, decode: bool = True, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(
                *args, _preload_content=False, _request_timeout=self.request_timeout_s, **kwargs
            )
        except ApiException as exc:
            raise KubeError(f"{what}: {describe_api_exception(exc)}", exc.status) from None
        except OSError as exc:  # connection refused, DNS, TLS
            raise KubeError(f"{what}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # urllib3's errors do not all derive from OSError
            if type(exc).__module__.startswith("urllib3"):
                raise KubeError(f"{what}: {type(exc).__name__}: {exc}") from None
            raise
        try:
            data = response.data
        finally:
            response.release_conn()
        if not decode:
            return data.decode("utf-8", "replace")
        try:
            return json.loads(data)
        except ValueError:
            raise KubeError(f"{what}: the API answered with something that is not JSON") from None

    # ---- reads -------------------------------------------------------------------------------
    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(
            f"get service {namespace}/{name}", self.core.read_namespaced_service, name, namespace
        )

    def find_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get_service(namespace, name)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        text = format_selector(selector)
        listing = self._call(
            f"list pods {namespace} -l {text}", self.core.list_namespaced_pod, namespace, label_selector=text
        )
        return list(listing.get("items") or [])

    def list_deployments(self, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
        text = format_selector(selector)
        listing = self._call(
            f"list deployments {namespace} -l {text}",
            self.apps.list_namespaced_deployment,
            namespace,
            label_selector=text,
        )
        return list(listing.get("items") or [])

    def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        """GET a path of a pod's port through the API server's pod proxy (works from outside the cluster)."""
        return self._call(
            f"get {path} of pod {namespace}/{pod}:{port}",
            self.core.connect_get_namespaced_pod_proxy_with_path,
            f"{pod}:{port}",
            namespace,
            path.lstrip("/"),
            decode=False,
        )

    # ---- writes (merge patches; dry_run sends them with dryRun=All: validated, not persisted) ----
    def patch_service(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        return self._call(
            f"patch service {namespace}/{name}",
            self.core.patch_namespaced_service,
            name,
            namespace,
            dict(patch),
            _content_type=MERGE_PATCH,
            dry_run="All" if dry_run else None,
        )

    def patch_deployment(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        return self._call(
            f"patch deployment {namespace}/{name}",
            self.apps.patch_namespaced_deployment,
            name,
            namespace,
            dict(patch),
            _content_type=MERGE_PATCH,
            dry_run="All" if dry_run else None,
        )


def format_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def describe_api_exception(exc: Any) -> str:
    """`HTTP 404 NotFound: services "demo" not found`, from the API's Status body when it has one."""
    status = getattr(exc, "status", None)
    text = f"HTTP {status}" if status else "API error"
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            decoded = json.loads(body)
        except (ValueError, TypeError):
            decoded = None
        if isinstance(decoded, dict):
            reason = decoded.get("reason") or ""
            message = f"{reason}: {decoded.get('message', '')}".strip(": ")
    if not message:
        message = str(getattr(exc, "reason", "") or "")
    if status == 403:
        message += " (check the RBAC of the identity making the call: see docs/kubernetes.md)"
    return f"{text} {message}".strip()
