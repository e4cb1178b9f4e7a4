"""Generate deploy/helm/warmgate/values.schema.json from the pydantic config model.

The chart's `warmup` values are rendered verbatim (less `startupBudgetSeconds`) into the ConfigMap
that becomes warmup.yaml, so their schema *is* `warmgate.config.Config`'s: a bad shape fails at
`helm install` with the same rules `warmgate check` applies. The rest of the chart's values are
described here.

    python deploy/helm/generate_schema.py           # rewrite values.schema.json
    python deploy/helm/generate_schema.py --check   # exit 1 if the committed file is out of date

The committed file is checked by tests/deploy/test_chart_schema.py: change the config model, rerun this.

Helm 3 (up to 3.17) validates with a draft-07 validator that does not know `$defs`; the pydantic
output (draft 2020-12) is converted: `$defs` -> `definitions` and every `$ref` rewritten. Nothing
else in pydantic's output needs a newer draft (`const`, numeric `exclusiveMinimum` are draft-06+).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Run as a script from a checkout: import the config model from this repository.
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from warmgate.config import json_schema  # noqa: E402
from warmgate.protocols import adapters  # noqa: E402

SCHEMA_PATH = Path(__file__).resolve().parent / "warmgate" / "values.schema.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"


def to_draft07(schema: dict[str, Any]) -> dict[str, Any]:
    """Convert pydantic's draft 2020-12 output to draft-07 (definitions and refs)."""

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                    out[key] = "#/definitions/" + value.removeprefix("#/$defs/")
                elif key == "$defs":
                    out["definitions"] = convert(value)
                elif key in ("prefixItems", "dependentRequired", "dependentSchemas", "unevaluatedProperties"):
                    raise ValueError(f"draft 2020-12 keyword {key!r} has no draft-07 equivalent here")
                else:
                    out[key] = convert(value)
            return out
        if isinstance(node, list):
            return [convert(item) for item in node]
        return node

    converted: dict[str, Any] = convert(schema)
    converted.pop("$schema", None)
    return converted


def _obj(
    description: str, properties: dict[str, Any] | None = None, *, closed: bool = True
) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "object", "description": description}
    if properties is not None:
        node["properties"] = properties
        if closed:
            node["additionalProperties"] = False
    return node


def _int(description: str, minimum: int = 0, maximum: int | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer", "minimum": minimum, "description": description}
    if maximum is not None:
        node["maximum"] = maximum
    return node


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _bool(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


# Kubernetes objects passed through verbatim: their own API validates them.
_K8S_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_K8S_OBJECT = {"type": "object"}
_K8S_LIST = {"type": "array", "items": {"type": "object"}}
_PROBE_TIMING: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "periodSeconds": _int("How often the kubelet probes.", 1),
        "timeoutSeconds": _int("Probe timeout.", 1),
        "failureThreshold": _int("Consecutive failures before acting.", 1),
        "successThreshold": _int("Consecutive successes before passing (readiness only).", 1),
        "initialDelaySeconds": _int("Delay before the first probe.", 0),
    },
}


# A cron schedule as CronJob and KEDA's cron scaler take it: five fields, or a macro like @daily.
_CRON = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+( \S+){4})$"


def _warm_pool_schema() -> dict[str, Any]:
    schedule = _obj(
        "From `schedule` on, the HPA keeps at least minReplicas pods (until `end`, or another schedule).",
        {
            "name": _str(
                "Names the CronJob (<release>-warm-<name>) or KEDA trigger: a DNS label of at most 18.",
                pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                maxLength=18,
            ),
            "schedule": _str("Cron: when the floor is raised (minutes ahead of the peak).", pattern=_CRON),
            "minReplicas": _int("The floor from then on (at most autoscaling.maxReplicas).", 1),
            "end": _str(
                "Cron: when autoscaling.minReplicas is restored (required with keda.enabled).",
                pattern=_CRON,
            ),
        },
    )
    schedule["required"] = ["name", "schedule", "minReplicas"]
    return _obj(
        "Scheduled minimum replicas (needs autoscaling.enabled): CronJobs running `warmgate warmpool`, "
        "or with keda.enabled a KEDA ScaledObject with cron triggers instead of the HPA.",
        {
            "schedules": {"type": "array", "items": schedule, "description": "Floors by time of day."},
            "timeZone": _str(
                "IANA time zone of the schedules ('' = the controller's; KEDA: Etc/UTC).",
                pattern="^([A-Za-z]+(/[A-Za-z0-9_+-]+)*|[A-Za-z]+[+-]?[0-9]*)?$",
            ),
            "wait": _obj(
                "The Job waits until minReplicas pods are Ready and warm (exit 3 at the deadline).",
                {
                    "enabled": _bool("Wait (adds list pods to the Role)."),
                    "timeoutSeconds": _int("Wait deadline.", 1),
                },
            ),
            "job": _obj(
                "The CronJobs and their Jobs.",
                {
                    "startingDeadlineSeconds": _int("A run missed by longer is skipped.", 1),
                    "backoffLimit": _int("Retries of a failed Job.", 0),
                    "successfulJobsHistoryLimit": _int("Finished Jobs kept.", 0),
                    "failedJobsHistoryLimit": _int("Failed Jobs kept.", 0),
                    "resources": _K8S_OBJECT,
                },
            ),
            "keda": _obj(
                "KEDA present: a ScaledObject (cpu + cron triggers) replaces the HPA; no CronJobs.",
                {
                    "enabled": _bool("Render a ScaledObject instead of the HPA and the CronJobs."),
                    "pollingInterval": _int("Seconds between KEDA's trigger checks.", 1),
                },
            ),
        },
    )


_IMAGE_DIGEST = "^(sha256:[a-f0-9]{64})?$"
_PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
# A Kubernetes duration as Prometheus reads it (30s, 1m, 1m30s).
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_INT_OR_PERCENT = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": "^[0-9]+%$"}],
}


def _mode_schema() -> dict[str, Any]:
    return {
        "enum": ["entrypoint", "injected", "sidecar"],
        "description": (
            "entrypoint: the model container runs warmgate's image "
            "(`warmgate run -- warmup.server.command`). "
            "injected: your server image (server.image), with warmgate's self-contained bundle copied in "
            "by an init container as its entrypoint (`/warmgate/warmgate run -- warmup.server.command`). "
            "sidecar: your image with its own command (server.command/args); `warmgate sidecar` warms, "
            "gates and drains it from outside (preStop GET /drain)."
        ),
    }


def _server_schema() -> dict[str, Any]:
    return _obj(
        "The model server's container (`model`). Its command: warmup.server.command in modes entrypoint "
        "and injected (warmgate starts it), server.command/args in mode sidecar (the kubelet does).",
        {
            "image": _obj(
                "Your server image (modes injected and sidecar; empty in mode entrypoint).",
                {
                    "repository": _str("Image repository ('' in mode entrypoint)."),
                    "tag": _str("Tag (or a digest) is required in modes injected and sidecar."),
                    "digest": _str("sha256:... pins the image; overrides the tag.", pattern=_IMAGE_DIGEST),
                    "pullPolicy": _PULL_POLICY,
                },
            ),
            "command": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Mode sidecar only: the container's command ([]: the image's ENTRYPOINT).",
            },
            "args": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Mode sidecar only: the container's args ([]: the image's CMD).",
            },
            "env": _K8S_LIST,
            "envFrom": _K8S_LIST,
            "ports": {
                "type": "array",
                "description": "More container ports; each needs a name (metrics.server.port names one).",
                "items": {
                    "type": "object",
                    "required": ["name", "containerPort"],
                    "properties": {
                        "name": _str(
                            "Port name (IANA_SVC_NAME).",
                            pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                            maxLength=15,
                        ),
                        "containerPort": _int("Port number.", 1, 65535),
                    },
                },
            },
            "securityContext": _K8S_OBJECT,
        },
    )


def _inject_schema() -> dict[str, Any]:
    return _obj(
        "Mode injected: the init container that copies warmgate's bundle into the pod.",
        {
            "bundlePath": _str("The bundle's directory in warmgate's image.", pattern="^/"),
            "mountPath": _str(
                "Where the model container sees the bundle (read-only); a path your image leaves free.",
                pattern="^/[^:]*$",
            ),
            "sizeLimit": _str("The bundle emptyDir's size limit."),
            "resources": _K8S_OBJECT,
        },
    )


def _cache_schema() -> dict[str, Any]:
    return _obj(
        "Compile/artifact cache mounted into the model/server container (WARMGATE_CACHE_DIR).",
        {
            "enabled": _bool("Mount the cache volume and set WARMGATE_CACHE_DIR."),
            "mountPath": _str("Where the cache is mounted.", pattern="^/[^:]*$"),
            "volume": {
                "type": "object",
                "description": (
                    "Any volume source, e.g. {persistentVolumeClaim: {claimName: x}}, {emptyDir: {}}, or "
                    "{image: {reference: r, pullPolicy: IfNotPresent}} (an image volume: Kubernetes 1.31+ "
                    "with the ImageVolume feature gate, beta from 1.33); {} = an emptyDir."
                ),
            },
            "readOnly": _bool("Mount read-only (a cache filled at build time)."),
        },
    )


def _monitor_schema(kind: str) -> dict[str, Any]:
    return _obj(
        f"A Prometheus Operator {kind} for the sidecar's and the server's /metrics.",
        {
            "enabled": _bool(f"Render a {kind} (the monitoring.coreos.com CRDs must be installed)."),
            "interval": _str("Scrape interval.", pattern=_DURATION),
            "scrapeTimeout": _str("Scrape timeout (at most the interval).", pattern=_DURATION),
            "labels": _K8S_MAP,
        },
    )


def _metrics_schema() -> dict[str, Any]:
    return _obj(
        "Prometheus scraping of the sidecar's /metrics (and the server's, by the monitors).",
        {
            "podAnnotations": _bool("Add prometheus.io/scrape, port and path annotations."),
            "server": _obj(
                "The model server's own metrics endpoint, scraped by the monitors beside the sidecar's.",
                {
                    "enabled": _bool("Scrape the server's metrics too."),
                    "port": _str(
                        "A named container port of the model container: http, grpc or one of server.ports.",
                        pattern="^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                    ),
                    "path": _str("Metrics path.", pattern="^/"),
                },
            ),
            "podMonitor": _monitor_schema("PodMonitor"),
            "serviceMonitor": _monitor_schema("ServiceMonitor"),
        },
    )


def _pdb_schema() -> dict[str, Any]:
    return _obj(
        "PodDisruptionBudget: exactly one of minAvailable and maxUnavailable (the other null).",
        {
            "enabled": _bool("Render the PodDisruptionBudget."),
            "minAvailable": {**_INT_OR_PERCENT, "description": "Pods kept through voluntary disruptions."},
            "maxUnavailable": {**_INT_OR_PERCENT, "description": "Pods evicted at most at a time."},
            "unhealthyPodEvictionPolicy": {
                "enum": ["AlwaysAllow", "IfHealthyBudget"],
                "description": "AlwaysAllow: a pod not Ready (warming or stuck) may always be evicted.",
            },
        },
    )


def _service_account_schema() -> dict[str, Any]:
    return _obj(
        "The pods' ServiceAccount: created with create (or with readinessGate.enabled and no name); "
        "its token reaches the sidecar only, and only with the readiness gate.",
        {
            "create": _bool("Create a ServiceAccount (named name, or the release's full name)."),
            "name": _str(
                "Use this ServiceAccount (created when create is true).",
                pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$",
            ),
            "annotations": _K8S_MAP,
        },
    )


def chart_schema() -> dict[str, Any]:
    config = to_draft07(json_schema(protocols=adapters()))
    definitions = config.pop("definitions", {})
    warmup = dict(config)
    warmup["title"] = "warmup.yaml (rendered into the ConfigMap)"
    warmup["description"] = (
        "The warmgate configuration, rendered into the ConfigMap as warmup.yaml (see `warmgate schema`). "
        "probe.port, warmgate.probe.readiness_gate and state_dir are set by the chart from probe.port, "
        "readinessGate and the state volume."
    )
    warmup["properties"] = {
        "startupBudgetSeconds": _int(
            "Longest a pod may take from start to warm (server load + warmup + load test): the model "
            "container's startupProbe allows failureThreshold x periodSeconds >= this.",
            1,
        ),
        "allowNoSlo": _bool(
            "Accept a gate without a latency SLO (warmup.gate.p95_ms / p99_ms), which judges warmth "
            "only: without either, the chart refuses to render."
        ),
        **warmup["properties"],
    }
    warmup["required"] = ["startupBudgetSeconds", *warmup.get("required", [])]

    properties: dict[str, Any] = {
        "nameOverride": _str("Replaces the chart name in resource names."),
        "fullnameOverride": _str("Replaces the release-derived resource name."),
        "image": _obj(
            "warmgate's image: the probe sidecar in every mode, the model container in mode entrypoint, "
            "the bundle copy in mode injected.",
            {
                "repository": _str("Image repository.", minLength=1),
                "tag": _str("Default: the chart's appVersion, with -gpu appended when gpu.enabled."),
                "digest": _str(
                    "sha256:... pins the image; overrides the tag.", pattern="^(sha256:[a-f0-9]{64})?$"
                ),
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
        ),
        "imagePullSecrets": _K8S_LIST,
        "mode": _mode_schema(),
        "server": _server_schema(),
        "inject": _inject_schema(),
        "cache": _cache_schema(),
        "podDisruptionBudget": _pdb_schema(),
        "topologySpreadConstraints": _K8S_LIST,
        "extraVolumes": _K8S_LIST,
        "extraVolumeMounts": _K8S_LIST,
        "extraInitContainers": _K8S_LIST,
        "replicaCount": _int("Replicas when autoscaling is off.", 0),
        "color": {
            "enum": ["", "blue", "green"],
            "description": "Blue/green color of this release's Deployment and pods ('' = no blue/green).",
        },
        "activeColor": {"enum": ["blue", "green"], "description": "The color the stable Service selects."},
        "appName": _str("Shared by the blue and green releases; default: the release name less -<color>."),
        "modelPort": _int("The model server's port (containerPort and Service targetPort).", 1, 65535),
        "grpcPort": _int(
            "The model server's OIP gRPC port (containerPort and Service targetPort `grpc`; it must match "
            "--grpc-port in warmup.server.command); 0: none.",
            0,
            65535,
        ),
        "service": _obj(
            "The stable Service (selects activeColor); with a color, also the preview Service (the other).",
            {
                "enabled": _bool("Render the Services (in exactly one of the blue/green releases)."),
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "port": _int("Service port.", 1, 65535),
                "grpcPort": _int("Service port for gRPC (with grpcPort set).", 1, 65535),
                "preview": _bool("Also render <appName>-preview selecting the inactive color."),
                "annotations": _K8S_MAP,
            },
        ),
        "warmup": warmup,
        "probe": _obj(
            "The probe sidecar (`warmgate probe`): serves the model container's probes and /metrics.",
            {
                "port": _int("Sidecar port; the model container's probes point here.", 1, 65535),
                "nativeSidecar": _bool(
                    "Run as a native sidecar (initContainer with restartPolicy Always, Kubernetes 1.29+)."
                ),
                "resources": _K8S_OBJECT,
                "sidecarModeResources": {
                    **_K8S_OBJECT,
                    "description": "The sidecar's resources in mode sidecar (it runs warmup and load test).",
                },
            },
        ),
        "probes": _obj(
            "Timing of the model container's probes (all served by the sidecar).",
            {
                "startup": {
                    **_PROBE_TIMING,
                    "description": "failureThreshold is derived from warmup.startupBudgetSeconds.",
                    "properties": {
                        k: v for k, v in _PROBE_TIMING["properties"].items() if k != "failureThreshold"
                    },
                },
                "readiness": _PROBE_TIMING,
                "liveness": _PROBE_TIMING,
            },
        ),
        "readinessGate": _obj(
            "Pod readiness gate set by the sidecar (needs a ServiceAccount token in the sidecar only).",
            {
                "enabled": _bool("Add the readinessGate, the ServiceAccount, Role and RoleBinding."),
                "conditionType": _str(
                    "The pod condition the sidecar sets.",
                    pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9][A-Za-z0-9_.-]*$",
                ),
            },
        ),
        "serviceAccount": _service_account_schema(),
        "terminationMarginSeconds": _int(
            "Added to warmup.drain quiet + grace periods for terminationGracePeriodSeconds.", 0
        ),
        "resources": _K8S_OBJECT,
        "gpu": _obj(
            "GPU variant: the -gpu image, a GPU resource limit, the GPU taint tolerated.",
            {
                "enabled": _bool("Request GPUs and use the -gpu image."),
                "count": _int("GPUs per pod.", 1),
                "resourceName": _str("Extended resource name.", minLength=1),
                "runtimeClassName": _str("RuntimeClass, e.g. nvidia (empty: the cluster default)."),
            },
        ),
        "stateVolume": _obj(
            "The shared emptyDir (medium Memory) for status.json and ready.json.",
            {"sizeLimit": _str("Size limit.")},
        ),
        "tmpVolume": _obj(
            "A writable /tmp for both containers (the root filesystem is read-only).",
            {"sizeLimit": _str("Size limit.")},
        ),
        "autoscaling": _obj(
            "HorizontalPodAutoscaler; minReplicas is the warm pool.",
            {
                "enabled": _bool("Render an HPA (autoscaling/v2)."),
                "minReplicas": _int("Warm pool size.", 1),
                "maxReplicas": _int("Upper bound.", 1),
                "targetCPUUtilizationPercentage": _int("CPU target.", 1, 100),
            },
        ),
        "warmPool": _warm_pool_schema(),
        "metrics": _metrics_schema(),
        "podAnnotations": _K8S_MAP,
        "podLabels": _K8S_MAP,
        "podSecurityContext": _K8S_OBJECT,
        "securityContext": _K8S_OBJECT,
        "extraEnv": _K8S_LIST,
        "nodeSelector": _K8S_MAP,
        "tolerations": _K8S_LIST,
        "affinity": _K8S_OBJECT,
        "priorityClassName": _str("PriorityClass of the pods."),
    }
    return {
        "$schema": DRAFT_07,
        "title": "warmgate Helm chart values",
        "description": "Generated by deploy/helm/generate_schema.py from warmgate.config.Config.",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "warmup", "probe", "probes", "modelPort"],
        "properties": properties,
        "definitions": definitions,
    }


def render() -> str:
    return json.dumps(chart_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed schema is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is out of date: run python deploy/helm/generate_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
