"""The chart's warm pool (values warmPool): CronJobs running `warmgate warmpool` with least-privilege
RBAC, or a KEDA ScaledObject with cron triggers; rendered by the real helm and validated.

The Kubernetes objects are validated strictly against the real schemas for every Kubernetes version
the chart tests cover. KEDA's CRD is not vendored: this project commits no file taken from another
public repository, and no package registry reachable here ships the CRD's schema (the npm and PyPI
KEDA model packages carry compiled validators and pydantic classes, not the CRD). KEDA_SCALED_OBJECT
below is therefore a strict subset written from the fields of KEDA's ScaledObject CRD
(keda.sh/v1alpha1, KEDA 2.x: spec.scaleTargetRef, min/maxReplicaCount, pollingInterval,
advanced.horizontalPodAutoscalerConfig.name, triggers[].type/name/metricType/metadata as strings)
and of its cron scaler (metadata timezone, start, end, desiredReplicas). Set WARMGATE_KEDA_CRD to a
copy of keda.sh_scaledobjects.yaml to validate against the CRD's own openAPIV3Schema as well.

Over 400 lines on purpose: the stand-in KEDA schema sits beside the only tests that use it, and
each refusal of the chart is one parametrized row.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.chart_support import by_kind, one
from tests.deploy.conftest import CHART, HelmError, Render, run_helm
from tests.deploy.test_chart import KUBE_VERSIONS
from tests.support.fake_kube import validate_object
from warmgate.cli import build_parser
from warmgate.probe.warmpool_cli import options_from_args

pytestmark = pytest.mark.timeout(120)

PEAK = {"name": "weekday-peak", "schedule": "30 7 * * 1-5", "minReplicas": 6, "end": "0 20 * * 1-5"}
SALE = {"name": "sale", "schedule": "0 9 24 11 *", "minReplicas": 10}
POOL = {
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
    "warmPool": {"timeZone": "Europe/Berlin", "schedules": [PEAK, SALE]},
}
KEDA = {
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 10},
    "warmPool": {"keda": {"enabled": True}, "schedules": [PEAK]},
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


MATRIX: dict[str, dict[str, Any]] = {
    "cronjobs": POOL,
    "readiness-gate": merged(POOL, {"readinessGate": {"enabled": True}}),
    "no-wait": merged(POOL, {"warmPool": {"wait": {"enabled": False}}}),
    "blue-gpu-digest": merged(
        POOL,
        {
            "color": "blue",
            "gpu": {"enabled": True},
            "image": {"digest": "sha256:" + "b" * 64},
            "imagePullSecrets": [{"name": "registry"}],
        },
    ),
    "keda": KEDA,
}

_CRON_METADATA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["timezone", "start", "end", "desiredReplicas"],
    "properties": {
        "timezone": {"type": "string", "minLength": 1},
        "start": {"type": "string", "minLength": 1},
        "end": {"type": "string", "minLength": 1},
        "desiredReplicas": {"type": "string", "pattern": "^[0-9]+$"},
    },
}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
KEDA_SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                        "if": {"properties": {"type": {"const": "cron"}}},
                        "then": {"properties": {"metadata": _CRON_METADATA}},
                    },
                },
            },
        },
    },
}


def validate_scaled_object(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, KEDA_SCALED_OBJECT)
    crd_path = os.environ.get("WARMGATE_KEDA_CRD")
    if crd_path:
        crd = yaml.safe_load(Path(crd_path).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])


def cronjobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in by_kind(docs, "CronJob")}


def job_pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    return pod


def parsed_command(cronjob: dict[str, Any]) -> Any:
    """The Job's command as warmgate's own CLI parses it (so a renamed option fails here)."""
    [container] = job_pod(cronjob)["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["warmgate", "warmpool"], command
    args = build_parser().parse_args(command[1:])
    return options_from_args(args)


# ---- rendering and validation --------------------------------------------------------------------


@pytest.mark.parametrize("case", MATRIX)
def test_renders_valid_objects_for_every_kubernetes_version(case: str, render: Render) -> None:
    docs = render(MATRIX[case], kube_version=KUBE_VERSIONS[0])
    assert by_kind(docs, "CronJob") or by_kind(docs, "ScaledObject")
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            validate_scaled_object(doc)
            continue
        for version in KUBE_VERSIONS:
            validate_object(doc, version)


def test_helm_lint_strict(helm: str, tmp_path: Path) -> None:
    for values in (POOL, KEDA):
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        done = run_helm(helm, ["lint", "--strict", str(CHART), "-f", str(values_file)], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr


def test_nothing_is_rendered_without_schedules(render: Render) -> None:
    for values in ({}, {"autoscaling": {"enabled": True}}):
        docs = render(values)
        assert not by_kind(docs, "CronJob") and not by_kind(docs, "ScaledObject")
        assert not [d for d in docs if "warm-pool" in d["metadata"]["name"]]


# ---- the CronJobs --------------------------------------------------------------------------------


def test_one_cronjob_per_schedule_and_one_per_end(render: Render) -> None:
    docs = render(POOL)
    jobs = cronjobs(docs)
    assert sorted(jobs) == [
        "demo-warmgate-warm-sale",
        "demo-warmgate-warm-weekday-peak",
        "demo-warmgate-warm-weekday-peak-end",
    ]
    hpa = one(docs, "HorizontalPodAutoscaler")
    deployment_selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]

    expected = {
        "demo-warmgate-warm-weekday-peak": ("30 7 * * 1-5", 6),
        "demo-warmgate-warm-weekday-peak-end": ("0 20 * * 1-5", 2),  # back to autoscaling.minReplicas
        "demo-warmgate-warm-sale": ("0 9 24 11 *", 10),
    }
    for name, (schedule, floor) in expected.items():
        spec = jobs[name]["spec"]
        assert (spec["schedule"], spec["timeZone"]) == (schedule, "Europe/Berlin")
        options = parsed_command(jobs[name])
        assert (options.namespace, options.hpa, options.min_replicas) == (
            "shop",
            hpa["metadata"]["name"],
            floor,
        )
        # It waits for exactly the Deployment's pods, Ready (no readiness gate in these values).
        assert options.wait and dict(options.selector) == deployment_selector
        assert options.condition_type is None
        assert options.timeout_s == 900
        # The Job may run a little longer than the wait, then it is stopped.
        assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 900 + 120
        assert spec["concurrencyPolicy"] == "Replace"


def test_with_the_readiness_gate_the_wait_requires_its_condition(render: Render) -> None:
    docs = render(merged(POOL, {"readinessGate": {"enabled": True, "conditionType": "example.com/warm"}}))
    for job in cronjobs(docs).values():
        assert parsed_command(job).condition_type == "example.com/warm"


def test_blue_green_waits_for_its_own_color(render: Render) -> None:
    values = merged(POOL, {"color": "green", "activeColor": "blue", "service": {"enabled": False}})
    docs = render(values, release="demo-green")
    for job in cronjobs(docs).values():
        options = parsed_command(job)
        assert (
            options.hpa == one(docs, "HorizontalPodAutoscaler")["metadata"]["name"] == "demo-green-warmgate"
        )
        assert options.selector is not None and options.selector["warmgate.dev/color"] == "green"


def test_without_wait_the_job_only_patches(render: Render) -> None:
    docs = render(merged(POOL, {"warmPool": {"wait": {"enabled": False}}}))
    for job in cronjobs(docs).values():
        options = parsed_command(job)
        assert not options.wait and options.selector is None
        assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 120


def test_the_job_pods_are_never_selected_as_model_pods(render: Render) -> None:
    docs = render(merged(POOL, {"color": "blue", "activeColor": "blue"}))
    selectors = [one(docs, "Deployment")["spec"]["selector"]["matchLabels"]]
    selectors += [s["spec"]["selector"] for s in by_kind(docs, "Service")]
    for job in cronjobs(docs).values():
        labels = job_pod(job)["metadata"]["labels"]
        for selector in selectors:
            assert not all(labels.get(k) == v for k, v in selector.items()), (labels, selector)


def test_hardened_job_pods(render: Render) -> None:
    docs = render(MATRIX["blue-gpu-digest"])
    for job in cronjobs(docs).values():
        spec = job_pod(job)["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["imagePullSecrets"] == [{"name": "registry"}]
        [container] = spec["containers"]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        assert container["resources"]["limits"]["memory"]
        assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
        # The pinned image, never a GPU resource: the Job only talks to the API server.
        assert container["image"] == "warmgate/warmgate@sha256:" + "b" * 64
        assert "nvidia.com/gpu" not in str(container["resources"])
        assert "runtimeClassName" not in spec and "tolerations" not in spec


def test_the_job_uses_the_cpu_image_of_a_gpu_release(render: Render) -> None:
    docs = render(merged(POOL, {"gpu": {"enabled": True}}))
    model = next(
        c for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "model"
    )
    assert model["image"].endswith("-gpu")
    for job in cronjobs(docs).values():
        assert job_pod(job)["spec"]["containers"][0]["image"] == "warmgate/warmgate:0.1.0"


def test_names_fit_a_cronjob_with_a_long_release_name(render: Render) -> None:
    docs = render(POOL, release="a-very-long-release-name-for-the-recommendation-model")
    for name in cronjobs(docs):
        # The Job controller appends 11 characters to a CronJob's name; 52 keeps Job names valid.
        assert len(name) <= 52, name
    assert len(cronjobs(docs)) == 3


# ---- RBAC: exactly the least set -----------------------------------------------------------------


@pytest.mark.parametrize("wait", [True, False])
def test_rbac_is_exactly_the_least_set(wait: bool, render: Render) -> None:
    docs = render(merged(POOL, {"warmPool": {"wait": {"enabled": wait}}}))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    account, role, binding = one(docs, "ServiceAccount"), one(docs, "Role"), one(docs, "RoleBinding")
    hpa_name = one(docs, "HorizontalPodAutoscaler")["metadata"]["name"]

    rules = [{"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
              "resourceNames": [hpa_name], "verbs": ["get", "patch"]}]  # fmt: skip
    if wait:
        rules.append({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})
    assert role["rules"] == rules
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "shop"}
    ]
    # The token reaches the Job pods only, never the model pods.
    assert account["automountServiceAccountToken"] is False
    for job in cronjobs(docs).values():
        spec = job_pod(job)["spec"]
        assert spec["serviceAccountName"] == account["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is True
    model_pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert model_pod.get("serviceAccountName") != account["metadata"]["name"]


def test_with_the_readiness_gate_each_identity_keeps_its_own_role(render: Render) -> None:
    docs = render(merged(POOL, {"readinessGate": {"enabled": True}}))
    roles = {r["metadata"]["name"]: r["rules"] for r in by_kind(docs, "Role")}
    assert set(roles) == {"demo-warmgate", "demo-warmgate-warm-pool"}
    assert all(rule["apiGroups"] == [""] for rule in roles["demo-warmgate"])
    bindings = {b["metadata"]["name"]: b["subjects"][0]["name"] for b in by_kind(docs, "RoleBinding")}
    assert bindings == {
        "demo-warmgate": "demo-warmgate",
        "demo-warmgate-warm-pool": "demo-warmgate-warm-pool",
    }


# ---- KEDA ----------------------------------------------------------------------------------------


def test_keda_replaces_the_hpa_with_cron_triggers(render: Render) -> None:
    docs = render(
        merged(
            KEDA,
            {
                "warmPool": {
                    "timeZone": "America/New_York",
                    "schedules": [PEAK, {**SALE, "end": "0 23 24 11 *"}],
                }
            },
        )
    )
    assert not by_kind(docs, "HorizontalPodAutoscaler") and not by_kind(docs, "CronJob")
    assert not by_kind(docs, "Role") and not by_kind(docs, "ServiceAccount")
    scaled = one(docs, "ScaledObject")
    validate_scaled_object(scaled)
    spec = scaled["spec"]
    deployment = one(docs, "Deployment")["metadata"]["name"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10)
    # KEDA's HPA keeps the name of the chart's own, so dashboards and `kubectl get hpa` agree.
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["name"] == deployment
    cpu, *crons = spec["triggers"]
    assert cpu == {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}
    zone = "America/New_York"
    assert crons == [
        {"type": "cron", "name": "warm-pool-weekday-peak", "metadata": {
            "timezone": zone, "start": "30 7 * * 1-5", "end": "0 20 * * 1-5", "desiredReplicas": "6"}},
        {"type": "cron", "name": "warm-pool-sale", "metadata": {
            "timezone": zone, "start": "0 9 24 11 *", "end": "0 23 24 11 *", "desiredReplicas": "10"}},
    ]  # fmt: skip


def test_keda_defaults_to_utc(render: Render) -> None:
    scaled = one(render(KEDA), "ScaledObject")
    assert scaled["spec"]["triggers"][1]["metadata"]["timezone"] == "Etc/UTC"


def test_the_keda_subset_schema_refuses_what_keda_would() -> None:
    """The stand-in schema can fail: a wrong field name, a number where KEDA wants a string."""
    good = {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "cron", "metadata": {
            "timezone": "Etc/UTC", "start": "0 8 * * *", "end": "0 9 * * *", "desiredReplicas": "3"}}]},
    }  # fmt: skip
    validate_scaled_object(good)
    bad_changes = [
        lambda o: o["spec"].update(minReplicas=2),
        lambda o: o["spec"]["triggers"][0]["metadata"].update(desiredReplicas=3),
        lambda o: o["spec"]["triggers"][0]["metadata"].pop("end"),
        lambda o: o["spec"]["scaleTargetRef"].pop("name"),
    ]
    for change in bad_changes:
        bad = yaml.safe_load(yaml.safe_dump(good))
        change(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_scaled_object(bad)


# ---- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warmPool": {"schedules": [PEAK]}}, "warmPool needs autoscaling.enabled"),
        ({"warmPool": {"keda": {"enabled": True}}}, "warmPool needs autoscaling.enabled"),
        (
            merged(POOL, {"autoscaling": {"maxReplicas": 5}}),
            "weekday-peak].minReplicas 6 is above autoscaling.maxReplicas 5",
        ),
        (merged(POOL, {"warmPool": {"schedules": [PEAK, PEAK]}}), 'the name "weekday-peak" is used twice'),
        (merged(KEDA, {"warmPool": {"schedules": [SALE]}}), "KEDA's cron trigger needs an end"),
        (
            merged(POOL, {"warmPool": {"schedules": [{**SALE, "name": "Sale"}]}}),
            "schedules.0.name: Does not match pattern",
        ),
        (
            merged(POOL, {"warmPool": {"schedules": [{**SALE, "name": "s" * 19}]}}),
            "schedules.0.name: String length",
        ),
        (
            merged(POOL, {"warmPool": {"schedules": [{**SALE, "schedule": "every day"}]}}),
            "schedules.0.schedule: Does not",
        ),
        (
            merged(POOL, {"warmPool": {"schedules": [{**SALE, "minReplicas": 0}]}}),
            "schedules.0.minReplicas: Must be",
        ),
        (
            merged(POOL, {"warmPool": {"schedules": [{"name": "x", "schedule": "@daily"}]}}),
            "minReplicas is required",
        ),
        (merged(POOL, {"warmPool": {"timeZone": "Europe/Berlin; rm"}}), "warmPool.timeZone: Does not"),
        (merged(POOL, {"warmPool": {"wait": {"timeoutSeconds": 0}}}), "timeoutSeconds: Must be"),
        (merged(POOL, {"warmPool": {"unknown": 1}}), "Additional property unknown is not allowed"),
    ],
)
def test_bad_warm_pool_values_fail_to_render(values: dict[str, Any], message: str, render: Render) -> None:
    with pytest.raises(HelmError) as info:
        render(values)
    assert message in info.value.stderr, info.value.stderr


def test_documented_example_renders(render: Render) -> None:
    """The commented example in values.yaml, uncommented, is valid as written."""
    text = (CHART / "values.yaml").read_text()
    example = [
        line for line in text.splitlines() if line.startswith("  # - name:") or line.startswith("  #   ")
    ]
    assert example, "values.yaml lost its warmPool example"
    # "  # - name: x" -> "- name: x", "  #   schedule: y" -> "  schedule: y"
    schedules = yaml.safe_load("\n".join(line[4:] for line in example))
    docs = render({"autoscaling": {"enabled": True}, "warmPool": {"schedules": schedules}})
    assert len(by_kind(docs, "CronJob")) == 2
    assert shlex.join(job_pod(by_kind(docs, "CronJob")[0])["spec"]["containers"][0]["command"]).startswith(
        "warmgate warmpool"
    )
