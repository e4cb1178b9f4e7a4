"""The Helm chart, rendered by the real helm and validated against the real Kubernetes schemas."""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy.chart_support import KUBE_VERSIONS, by_kind, container, one, pod_spec, rendered_config
from tests.deploy.conftest import CHART, HelmError, Render, run_helm
from tests.support.fake_kube import validate_object
from warmgate.config import DrainConfig, validate_config

# Kubernetes 1.29 (native sidecars on by default) up to the newest the validator ships.
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())

CUSTOM_SHAPES = {
    "warmup": {
        "startupBudgetSeconds": 900,
        "shapes": [
            {
                "name": "text-short",
                "batch_size": 1,
                "inputs": {"text": {"datatype": "BYTES", "dims": [1], "data": "text", "length": 16}},
                "count": 4,
                "weight": 3,
            },
            {
                "name": "image-bs16",
                "batch_size": 16,
                "inputs": {"input": {"datatype": "FP16", "dims": [3, 224, 224], "data": "zero"}},
                "count": 2,
                "weight": 1,
                "until_stable": {"enabled": True, "window": 5, "tolerance": 0.1},
            },
        ],
        "load_test": {"mode": "open", "rate": 20, "duration_s": 30},
        "gate": {"p95_ms": 250, "max_error_rate": 0.001},
    }
}

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "native-sidecar": {"probe": {"nativeSidecar": True}},
    "readiness-gate": {"readinessGate": {"enabled": True}},
    "gpu": {"gpu": {"enabled": True, "count": 2, "runtimeClassName": "nvidia"}},
    "blue": {"color": "blue", "activeColor": "blue"},
    "green": {"color": "green", "activeColor": "blue", "service": {"enabled": False}},
    "custom-shapes": CUSTOM_SHAPES,
    "everything": {
        "color": "green",
        "probe": {"nativeSidecar": True},
        "readinessGate": {"enabled": True},
        "gpu": {"enabled": True},
        "autoscaling": {"enabled": True, "minReplicas": 3},
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "registry"}],
        "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "2"}],
        "podAnnotations": {"team": "ml"},
        **CUSTOM_SHAPES,
    },
}


# ---- lint and schema validation of every rendered object -------------------------------------------


def test_helm_lint_strict(helm: str, tmp_path: Path) -> None:
    for values in ({}, MATRIX["everything"]):
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        done = run_helm(helm, ["lint", "--strict", str(CHART), "-f", str(values_file)], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("case", MATRIX)
def test_renders_valid_objects_for_every_kubernetes_version(case: str, render: Render) -> None:
    assert KUBE_VERSIONS[0].startswith("1.29") and KUBE_VERSIONS[-1] == latest_version()
    docs = render(MATRIX[case], kube_version=KUBE_VERSIONS[0])
    assert {"ConfigMap", "Deployment"} <= {d["kind"] for d in docs}
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_object(doc, version)


@pytest.mark.parametrize("case", MATRIX)
def test_the_rendered_warmup_yaml_is_a_valid_config(case: str, render: Render) -> None:
    docs = render(MATRIX[case])
    config = validate_config(rendered_config(docs), "warmup.yaml (ConfigMap)", {})

    assert str(config.state_dir) == "/var/run/warmgate"
    assert config.probe.port == 8086
    spec = pod_spec(docs)
    gates = [g["conditionType"] for g in spec.get("readinessGates", [])]
    assert config.probe.readiness_gate.enabled == bool(gates)
    if gates:
        assert gates == [config.probe.readiness_gate.condition_type]
    # The model container runs the configured server command after the image's `warmgate run --`.
    assert container(docs, "model")["args"] == list(config.server.command)
    assert "command" not in container(docs, "model")


def test_values_warmup_section_matches_the_default_config_shapes(render: Render) -> None:
    docs = render(MATRIX["custom-shapes"])
    shapes = rendered_config(docs)["shapes"]
    assert [s["name"] for s in shapes] == ["text-short", "image-bs16"]
    assert "startupBudgetSeconds" not in rendered_config(docs)


# ---- probes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["defaults", "native-sidecar", "readiness-gate"])
def test_model_probes_point_at_the_sidecar_port(case: str, render: Render) -> None:
    docs = render(MATRIX[case])
    model, probe = container(docs, "model"), container(docs, "probe")
    probe_port = probe["ports"][0]["containerPort"]
    assert probe_port == DEFAULTS["probe"]["port"]
    paths = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert model[kind]["httpGet"]["port"] == probe_port
        paths[kind] = model[kind]["httpGet"]["path"]
    assert paths == {"startupProbe": "/startupz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    # The sidecar's own probes never wait for warmup: startup checks that it listens; liveness that
    # its event loop answers (/healthz), not the model server's liveness (/livez): a dead model
    # server must not restart the sidecar, and a wedged sidecar must not pass a TCP check.
    assert probe["startupProbe"]["tcpSocket"]["port"] == "probe"
    assert "tcpSocket" not in probe["livenessProbe"]
    assert probe["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}
    assert "readinessProbe" not in probe
    assert probe["command"] == ["warmgate", "probe"]


def test_custom_probe_port_moves_every_probe(render: Render) -> None:
    docs = render({"probe": {"port": 9099}})
    assert container(docs, "probe")["ports"][0]["containerPort"] == 9099
    model = container(docs, "model")
    assert {model[k]["httpGet"]["port"] for k in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        9099
    }
    assert rendered_config(docs)["probe"]["port"] == 9099
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9099"


@pytest.mark.parametrize(
    ("budget", "period", "threshold"),
    [(600, 5, 120), (601, 5, 121), (10, 3, 4), (1, 10, 1), (3600, 10, 360)],
)
def test_startup_probe_allows_exactly_the_startup_budget(
    budget: int, period: int, threshold: int, render: Render
) -> None:
    docs = render(
        {
            "warmup": {**DEFAULTS["warmup"], "startupBudgetSeconds": budget},
            "probes": {"startup": {"periodSeconds": period, "timeoutSeconds": 2}},
        }
    )
    startup = container(docs, "model")["startupProbe"]

    assert startup["periodSeconds"] == period
    assert startup["failureThreshold"] == threshold
    # Never kills a model that is within its budget, and not more than one period after it.
    assert startup["failureThreshold"] * period >= budget > (startup["failureThreshold"] - 1) * period


def test_native_sidecar_is_an_always_restarting_init_container(render: Render) -> None:
    docs = render(MATRIX["native-sidecar"])
    spec = pod_spec(docs)

    assert [c["name"] for c in spec["initContainers"]] == ["probe"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["model"]
    # A native sidecar outlives the model container by itself: no preStop delay needed.
    assert "lifecycle" not in spec["initContainers"][0]


def test_regular_sidecar_outlives_the_quiet_period(render: Render) -> None:
    docs = render({"warmup": {**DEFAULTS["warmup"], "drain": {"quiet_period_s": 7.5, "grace_period_s": 30}}})
    spec = pod_spec(docs)
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["model", "probe"]
    assert container(docs, "probe")["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "8"]


# ---- termination ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("quiet", "grace", "margin"), [(5, 20, 5), (7.5, 30, 5), (0, 0, 0), (15, 120, 10)])
def test_termination_grace_covers_the_drain(quiet: float, grace: float, margin: int, render: Render) -> None:
    warmup = {**DEFAULTS["warmup"], "drain": {"quiet_period_s": quiet, "grace_period_s": grace}}
    docs = render({"warmup": warmup, "terminationMarginSeconds": margin})
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == math.ceil(quiet + grace) + margin


def test_termination_grace_defaults_follow_the_config_model(render: Render) -> None:
    warmup = {k: v for k, v in DEFAULTS["warmup"].items() if k != "drain"}
    docs = render({"warmup": warmup, "terminationMarginSeconds": 0})
    defaults = DrainConfig()
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == math.ceil(
        defaults.quiet_period_s + defaults.grace_period_s
    )


# ---- security ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MATRIX)
def test_hardened_security_context(case: str, render: Render) -> None:
    docs = render(MATRIX[case])
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for name in ("model", "probe"):
        context = container(docs, name)["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        # A read-only root needs writable scratch space and the shared state directory.
        mounts = {m["mountPath"]: m for m in container(docs, name)["volumeMounts"]}
        assert {"/tmp", "/var/run/warmgate", "/etc/warmgate"} <= set(mounts)
    assert container(docs, "probe")["volumeMounts"][0] == {
        "name": "state", "mountPath": "/var/run/warmgate", "readOnly": True,
    }  # fmt: skip
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["state"]["emptyDir"]["medium"] == "Memory"


def test_no_rbac_and_no_token_without_the_readiness_gate(render: Render) -> None:
    docs = render()
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    spec = pod_spec(docs)
    assert "serviceAccountName" not in spec
    assert "readinessGates" not in spec
    assert all(v["name"] != "kube-api-access" for v in spec["volumes"])


@pytest.mark.parametrize("native", [False, True])
def test_readiness_gate_rbac_is_minimal_and_the_token_reaches_the_sidecar_only(
    native: bool, render: Render
) -> None:
    docs = render(
        {
            "readinessGate": {"enabled": True, "conditionType": "example.com/warm"},
            "probe": {"nativeSidecar": native},
        }
    )
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    account, role, binding = one(docs, "ServiceAccount"), one(docs, "Role"), one(docs, "RoleBinding")

    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "shop"}
    ]
    assert account["automountServiceAccountToken"] is False

    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["readinessGates"] == [{"conditionType": "example.com/warm"}]
    assert spec["automountServiceAccountToken"] is False
    token_mount = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert token_mount in {m["mountPath"] for m in container(docs, "probe")["volumeMounts"]}
    assert token_mount not in {m["mountPath"] for m in container(docs, "model")["volumeMounts"]}
    sources = next(v for v in spec["volumes"] if v["name"] == "kube-api-access")["projected"]["sources"]
    assert [next(iter(s)) for s in sources] == ["serviceAccountToken", "configMap", "downwardAPI"]
    # The sidecar names its pod through the downward API.
    env = {e["name"]: e for e in container(docs, "probe")["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    gate = rendered_config(docs)["probe"]["readiness_gate"]
    assert gate == {"enabled": True, "condition_type": "example.com/warm"}


# ---- GPU, blue/green, autoscaling -------------------------------------------------------------------


def test_gpu_variant(render: Render) -> None:
    docs = render(MATRIX["gpu"])
    spec = pod_spec(docs)
    model = container(docs, "model")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert model["resources"]["limits"]["memory"] == DEFAULTS["resources"]["limits"]["memory"]
    assert "nvidia.com/gpu" not in container(docs, "probe")["resources"].get("limits", {})
    assert model["image"].endswith(":0.1.0-gpu")
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    cpu = container(render(), "model")
    assert cpu["image"].endswith(":0.1.0") and "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_blue_green_labels_and_services(render: Render) -> None:
    blue = render(MATRIX["blue"], release="demo-blue")
    green = render(MATRIX["green"], release="demo-green")

    for docs, color in ((blue, "blue"), (green, "green")):
        deployment = one(docs, "Deployment")
        assert deployment["metadata"]["labels"]["warmgate.dev/color"] == color
        assert deployment["spec"]["selector"]["matchLabels"]["warmgate.dev/color"] == color
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pod_labels["warmgate.dev/color"] == color
        assert pod_labels["warmgate.dev/app"] == "demo"
        assert deployment["metadata"]["name"] != "demo"

    # The blue release owns both Services; the green one renders none (service.enabled=false).
    assert not by_kind(green, "Service")
    services = {s["metadata"]["name"]: s for s in by_kind(blue, "Service")}
    assert set(services) == {"demo", "demo-preview"}
    assert services["demo"]["spec"]["selector"] == {
        "app.kubernetes.io/name": "warmgate", "warmgate.dev/app": "demo", "warmgate.dev/color": "blue",
    }  # fmt: skip
    assert services["demo-preview"]["spec"]["selector"]["warmgate.dev/color"] == "green"
    # A Service belongs to no color, and selects pods of either release.
    for service in services.values():
        assert "warmgate.dev/color" not in service["metadata"]["labels"]
        green_pods = one(green, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert {
            k: v for k, v in service["spec"]["selector"].items() if k != "warmgate.dev/color"
        }.items() <= green_pods.items()


def test_active_color_green_swaps_the_services(render: Render) -> None:
    docs = render({"color": "blue", "activeColor": "green"}, release="demo-blue")
    services = {
        s["metadata"]["name"]: s["spec"]["selector"]["warmgate.dev/color"] for s in by_kind(docs, "Service")
    }
    assert services == {"demo": "green", "demo-preview": "blue"}


def test_without_a_color_the_service_selects_the_release(render: Render) -> None:
    docs = render()
    service = one(docs, "Service")
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container(docs, "model")["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}


def test_the_grpc_port_is_exposed_where_the_default_server_serves_it(render: Render) -> None:
    docs = render({"color": "blue"}, release="demo-blue")
    model = container(docs, "model")
    assert model["ports"][1] == {"name": "grpc", "containerPort": DEFAULTS["grpcPort"], "protocol": "TCP"}
    # The default server command serves gRPC on that port.
    args = model["args"]
    assert args[args.index("--grpc-port") + 1] == str(DEFAULTS["grpcPort"]) == "8001"
    for service in by_kind(docs, "Service"):
        assert service["spec"]["ports"][1] == {
            "name": "grpc",
            "port": DEFAULTS["service"]["grpcPort"],
            "targetPort": "grpc",
            "protocol": "TCP",
        }


def test_grpc_port_0_exposes_no_grpc_port(render: Render) -> None:
    docs = render({"grpcPort": 0, "service": {"grpcPort": 9001}})
    assert [p["name"] for p in container(docs, "model")["ports"]] == ["http"]
    assert [p["name"] for p in one(docs, "Service")["spec"]["ports"]] == ["http"]


def test_hpa_keeps_a_warm_pool(render: Render) -> None:
    docs = render({"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 12}})
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 12)
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert "replicas" not in one(docs, "Deployment")["spec"]
    assert one(render(), "Deployment")["spec"]["replicas"] == DEFAULTS["replicaCount"]


def test_rollout_never_removes_a_warm_pod_first_and_config_changes_roll_pods(render: Render) -> None:
    docs = render()
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    changed = copy.deepcopy(DEFAULTS["warmup"])
    changed["load_test"]["duration_s"] = 99
    checksum = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    other = one(render({"warmup": changed}), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert other["checksum/config"] != checksum


def test_standard_labels(render: Render) -> None:
    for doc in render(MATRIX["everything"], release="demo-green"):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "warmgate"
        assert labels["app.kubernetes.io/instance"] == "demo-green"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "warmgate-0.1.0"


# ---- values rejected at install time ------------------------------------------------------------------

BAD_VALUES = {
    "negative batch size": ({"batch_size": -1}, "batch_size"),
    "zero dim": ({"inputs": {"input": {"datatype": "FP32", "dims": [3, 0, 64]}}}, "dims"),
    "unknown datatype": ({"inputs": {"input": {"datatype": "FP33", "dims": [3]}}}, "datatype"),
    "typo in a key": ({"batchsize": 4}, "batchsize"),
    "no inputs": ({"inputs": {}}, "inputs"),
    "bad name": ({"name": "has spaces"}, "name"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_a_bad_shape_fails_helm_with_the_schema_error(case: str, render: Render) -> None:
    change, field = BAD_VALUES[case]
    warmup = copy.deepcopy(DEFAULTS["warmup"])
    warmup["shapes"][1].update(change)

    with pytest.raises(HelmError) as info:
        render({"warmup": warmup})

    assert "values don't meet the specifications of the schema" in info.value.stderr
    # helm 3 writes warmup.shapes.1.batch_size, helm 4 /warmup/shapes/1/batch_size.
    assert re.search(r"warmup[./]shapes[./]1", info.value.stderr), info.value.stderr
    assert field in info.value.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"color": "purple"},
        {"warmup": {**DEFAULTS["warmup"], "startupBudgetSeconds": 0}},
        # null removes a default in helm: the budget is required.
        {"warmup": {"startupBudgetSeconds": None}},
        {"probe": {"port": 70000}},
        {"grpcPort": 70000},
        {"service": {"grpcPort": 0}},
        {"replicas": 3},
    ],
    ids=[
        "color",
        "zero-budget",
        "no-budget",
        "probe-port",
        "grpc-port",
        "service-grpc-port",
        "unknown-top-level-key",
    ],
)
def test_other_bad_values_fail_the_schema(values: dict[str, Any], render: Render) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        render(values)


# ---- a latency SLO, or an explicit opt-out ------------------------------------------------------------


def without_slo(**extra: Any) -> dict[str, Any]:
    """The default warmup values with no p95/p99 SLO (null removes a default key in helm)."""
    return {"warmup": {"gate": {"p95_ms": None, "p99_ms": None}, **extra}}


def test_the_defaults_state_a_latency_slo(render: Render) -> None:
    config = validate_config(rendered_config(render({})), "warmup.yaml (ConfigMap)", {})
    assert config.gate.p95_ms == DEFAULTS["warmup"]["gate"]["p95_ms"]
    assert DEFAULTS["warmup"]["allowNoSlo"] is False


def test_a_gate_without_a_latency_slo_fails_to_render(render: Render) -> None:
    # Without an SLO the gate judges warmth only: an overloaded replica passes it.
    with pytest.raises(HelmError) as info:
        render(without_slo())
    assert "warmup.gate has no latency SLO: set warmup.gate.p95_ms or warmup.gate.p99_ms" in info.value.stderr
    assert "warmup.allowNoSlo: true" in info.value.stderr


@pytest.mark.parametrize(
    ("gate", "expected"),
    [({"p95_ms": None, "p99_ms": 800}, (None, 800)), ({"p95_ms": 120}, (120, None))],
    ids=["p99-only", "p95-only"],
)
def test_either_percentile_is_an_slo(render: Render, gate: dict[str, Any], expected: tuple[Any, Any]) -> None:
    config = rendered_config(render({"warmup": {"gate": gate}}))
    assert (config["gate"].get("p95_ms"), config["gate"].get("p99_ms")) == expected


def test_the_explicit_opt_out_renders_a_gate_without_an_slo(render: Render) -> None:
    config = rendered_config(render(without_slo(allowNoSlo=True)))
    # helm drops p95_ms (a default); p99_ms, never a default, stays as an explicit null.
    assert config["gate"].get("p95_ms") is None and config["gate"].get("p99_ms") is None
    # A chart-only key: warmup.yaml knows nothing of it (its schema would refuse it).
    assert "allowNoSlo" not in config
    validate_config(config, "warmup.yaml (ConfigMap)", {})


def test_the_opt_out_is_a_boolean(render: Render) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        render(without_slo(allowNoSlo="yes"))


# ---- NOTES.txt ----------------------------------------------------------------------------------------


def render_notes(helm: str, tmp_path: Path, values: dict[str, Any], release: str) -> str:
    # helm template does not print NOTES.txt: render it as a ConfigMap in a copy of the chart.
    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "NOTES.txt").unlink()
        (chart / "templates" / "_notes.tpl").write_text(
            '{{- define "test.notes" -}}\n' + notes + "{{- end }}\n"
        )
        (chart / "templates" / "notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
            'data:\n  notes: {{ include "test.notes" . | toJson }}\n'
        )
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = run_helm(
        helm,
        [
            "template",
            release,
            str(chart),
            "-n",
            "shop",
            "-f",
            str(values_file),
            "--show-only",
            "templates/notes.yaml",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    text: str = yaml.safe_load(done.stdout)["data"]["notes"]
    return text


def test_notes_tell_how_to_watch_warmup_and_promote(helm: str, tmp_path: Path) -> None:
    text = render_notes(helm, tmp_path, {"color": "green", "readinessGate": {"enabled": True}}, "demo-green")

    assert "kubectl -n shop logs -f deploy/demo-green-warmgate -c model" in text
    assert "curl -s localhost:8086/startupz" in text
    assert "warmgate promote --namespace shop --service demo --to green" in text
    assert "warmgate.dev/warm" in text
    # The sidecar holds warmgate and the state in every mode.
    assert "exec deploy/demo-green-warmgate -c probe -- warmgate report /var/run/warmgate/ready.json" in text


def test_notes_point_at_the_sidecars_logs_in_sidecar_mode(helm: str, tmp_path: Path) -> None:
    values = {"mode": "sidecar", "server": {"image": {"repository": "example.com/server", "tag": "1"}}}
    text = render_notes(helm, tmp_path, values, "demo")
    assert "logs -f deploy/demo-warmgate -c probe" in text and "(mode sidecar)" in text
