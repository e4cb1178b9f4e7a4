"""The chart's three modes (entrypoint, injected, sidecar), its server block, the cache mount and
the extras (PodDisruptionBudget, ServiceAccount, topology spread, extra volumes and init
containers), rendered by the real helm and validated against the real Kubernetes schemas.

Over 400 lines: one matrix of modes x features, and the contradictions each mode refuses, read
best side by side; the monitors are in test_monitoring.py, the values examples in
test_chart_examples.py.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart_support import (
    IMAGE_VOLUME_VERSIONS,
    KUBE_VERSIONS,
    by_kind,
    container,
    one,
    pod_spec,
    rendered_config,
    validate_rendered,
)
from tests.deploy.conftest import CHART, HelmError, Render, run_helm
from warmgate.artifacts.environment import CACHE_ENV, server_environment
from warmgate.config import validate_config

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
SERVER_IMAGE = {"repository": "registry.example.com/ml/server", "tag": "1.4.2"}
SERVER_ARGS = ["mlserver", "start", "/mnt/models"]
MODES: dict[str, dict[str, Any]] = {
    "entrypoint": {},
    "injected": {"mode": "injected", "server": {"image": SERVER_IMAGE}},
    "sidecar": {"mode": "sidecar", "server": {"image": SERVER_IMAGE, "args": SERVER_ARGS}},
}
FEATURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "native-sidecar": {"probe": {"nativeSidecar": True}},
    "readiness-gate": {"readinessGate": {"enabled": True}},
    "green": {"color": "green", "activeColor": "blue", "service": {"enabled": False}},
    "warm-pool": {
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8},
        "warmPool": {"schedules": [{"name": "peak", "schedule": "30 7 * * 1-5", "minReplicas": 6}]},
    },
    "gpu": {"gpu": {"enabled": True, "count": 1}},
    "cache-pvc": {"cache": {"enabled": True, "volume": {"persistentVolumeClaim": {"claimName": "compiled"}}}},
    "everything": {
        "color": "blue",
        "probe": {"nativeSidecar": True},
        "readinessGate": {"enabled": True},
        "autoscaling": {"enabled": True},
        "serviceAccount": {"create": True, "annotations": {"example.com/role": "inference"}},
        "cache": {"enabled": True},
        "extraVolumes": [
            {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
        ],
        "extraVolumeMounts": [{"name": "weights", "mountPath": "/mnt/models", "readOnly": True}],
        "extraInitContainers": [{"name": "fetch", "image": "busybox:1.36", "command": ["true"]}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    },
}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge values layers the way helm merges -f files."""
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def release_of(values: dict[str, Any]) -> str:
    return f"demo-{values['color']}" if values.get("color") else "demo"


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_renders_valid_objects_for_every_kubernetes_version(
    mode: str, feature: str, render: Render
) -> None:
    values = merged(MODES[mode], FEATURES[feature])
    docs = render(values, release=release_of(values), kube_version=KUBE_VERSIONS[0])
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_rendered(doc, version)
    config = validate_config(rendered_config(docs), "warmup.yaml (ConfigMap)", {})
    assert str(config.state_dir) == "/var/run/warmgate"


@pytest.mark.parametrize("mode", MODES)
def test_helm_lint_strict_in_every_mode(mode: str, helm: str, tmp_path: Path) -> None:
    for feature in ("plain", "everything"):
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(merged(MODES[mode], FEATURES[feature])))
        done = run_helm(helm, ["lint", "--strict", str(CHART), "-f", str(values_file)], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_is_mode_entrypoint_unchanged(render: Render) -> None:
    assert DEFAULTS["mode"] == "entrypoint"
    assert render() == render({"mode": "entrypoint"})
    spec = pod_spec(render())
    assert "initContainers" not in spec
    model = container(render(), "model")
    assert model["image"] == "warmgate/warmgate:0.1.0"
    assert "command" not in model and model["args"] == DEFAULTS["warmup"]["server"]["command"]


# ---- the model container in each mode -----------------------------------------------------------


def probe_paths(model: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {
        kind: (model[kind]["httpGet"]["path"], model[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }


@pytest.mark.parametrize("mode", MODES)
def test_probes_are_the_sidecars_in_every_mode(mode: str, render: Render) -> None:
    docs = render(merged(MODES[mode], {"probe": {"port": 9099}}))
    assert probe_paths(container(docs, "model")) == {
        "startupProbe": ("/startupz", 9099),
        "readinessProbe": ("/readyz", 9099),
        "livenessProbe": ("/livez", 9099),
    }
    probe = container(docs, "probe")
    assert probe["image"] == "warmgate/warmgate:0.1.0"
    assert probe["ports"] == [{"name": "probe", "containerPort": 9099, "protocol": "TCP"}]
    assert probe["command"] == ["warmgate", "sidecar" if mode == "sidecar" else "probe"]
    assert rendered_config(docs)["probe"]["port"] == 9099


def test_injected_copies_the_bundle_and_wraps_the_server_command_in_the_users_image(render: Render) -> None:
    docs = render(merged(MODES["injected"], {"gpu": {"enabled": True}}))
    config = validate_config(rendered_config(docs), "warmup.yaml (ConfigMap)", {})
    spec = pod_spec(docs)
    (install,) = spec["initContainers"]
    assert install["name"] == "install-warmgate"
    # warmgate's plain image: the bundle and the sidecar need no GPU stack, the server image has it.
    assert install["image"] == "warmgate/warmgate:0.1.0"
    # -R, not -a: as uid 10001, preserving times on the emptyDir's root (owned by root) fails, and
    # the pod would never start (tests/deploy/test_injected.py copies with the same command).
    assert install["command"] == ["cp", "-R", "/opt/warmgate-bundle/.", "/warmgate/"]
    assert install["volumeMounts"] == [{"name": "warmgate-bundle", "mountPath": "/warmgate"}]
    assert install["resources"] == DEFAULTS["inject"]["resources"]
    assert install["securityContext"]["readOnlyRootFilesystem"] is True

    model = container(docs, "model")
    assert model["image"] == "registry.example.com/ml/server:1.4.2"
    assert model["command"] == ["/warmgate/warmgate", "run", "--", *config.server.command]
    assert "args" not in model
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["mountPath"]: m for m in model["volumeMounts"]}
    assert mounts["/warmgate"] == {"name": "warmgate-bundle", "mountPath": "/warmgate", "readOnly": True}
    # The same state and config as in mode entrypoint: the injected warmgate writes the state.
    assert mounts["/var/run/warmgate"] == {"name": "state", "mountPath": "/var/run/warmgate"}
    assert mounts["/etc/warmgate"]["readOnly"] is True
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["WARMGATE_CONFIG"] == "/etc/warmgate/warmup.yaml"
    # The drain is warmgate's on TERM, as in mode entrypoint: no preStop hook.
    assert "lifecycle" not in model
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["warmgate-bundle"] == {"name": "warmgate-bundle", "emptyDir": {"sizeLimit": "512Mi"}}
    assert container(docs, "probe")["image"] == "warmgate/warmgate:0.1.0"


def test_injected_paths_follow_the_values(render: Render) -> None:
    values = merged(
        MODES["injected"],
        {
            "inject": {"bundlePath": "/opt/bundle/", "mountPath": "/opt/wg"},
            "server": {"image": {"digest": "sha256:" + "b" * 64}},
        },
    )
    docs = render(values)
    install = pod_spec(docs)["initContainers"][0]
    assert install["command"] == ["cp", "-R", "/opt/bundle/.", "/opt/wg/"]
    model = container(docs, "model")
    assert model["command"][:3] == ["/opt/wg/warmgate", "run", "--"]
    assert model["image"] == "registry.example.com/ml/server@sha256:" + "b" * 64


@pytest.mark.parametrize(("quiet", "grace", "margin"), [(5, 20, 5), (7.5, 30, 5), (15, 120, 10)])
def test_sidecar_mode_drains_through_a_prestop_hook_within_the_grace_period(
    quiet: float, grace: float, margin: int, render: Render
) -> None:
    values = merged(
        MODES["sidecar"],
        {
            "warmup": {"drain": {"quiet_period_s": quiet, "grace_period_s": grace}},
            "terminationMarginSeconds": margin,
        },
    )
    docs = render(values)
    model = container(docs, "model")
    assert model["lifecycle"] == {
        "preStop": {"httpGet": {"path": "/drain", "port": DEFAULTS["probe"]["port"]}}
    }
    # The hook holds for the quiet period, then the server gets its grace before SIGKILL.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == math.ceil(quiet + grace) + margin
    # The regular sidecar outlives the hook.
    assert container(docs, "probe")["lifecycle"]["preStop"]["exec"]["command"] == [
        "sleep",
        str(math.ceil(quiet)),
    ]


def test_sidecar_mode_runs_the_image_as_it_is_and_the_sidecar_owns_the_state(render: Render) -> None:
    docs = render(MODES["sidecar"])
    model = container(docs, "model")
    assert model["image"] == "registry.example.com/ml/server:1.4.2"
    assert model["args"] == SERVER_ARGS and "command" not in model
    # warmgate does not run in the server container: no warmgate config, state or environment.
    mounts = {m["mountPath"] for m in model["volumeMounts"]}
    assert mounts == {"/tmp"}
    assert "env" not in model
    probe = container(docs, "probe")
    state = next(m for m in probe["volumeMounts"] if m["name"] == "state")
    assert state == {"name": "state", "mountPath": "/var/run/warmgate"}, "the sidecar writes the state"
    # warmgate never starts the server here: warmup.yaml holds no command to start.
    server = rendered_config(docs)["server"]
    assert "command" not in server
    assert server["url"] == DEFAULTS["warmup"]["server"]["url"]
    # Without command and args the image's own ENTRYPOINT and CMD run.
    bare = container(render(merged(MODES["sidecar"], {"server": {"args": []}})), "model")
    assert "command" not in bare and "args" not in bare


def test_sidecar_mode_passes_command_args_env_and_ports(render: Render) -> None:
    values = merged(
        MODES["sidecar"],
        {
            "server": {
                "command": ["/bin/serve"],
                "args": ["--port", "8080"],
                "env": [{"name": "MLSERVER_HTTP_PORT", "value": "8080"}],
                "envFrom": [{"configMapRef": {"name": "server-settings"}}],
                "ports": [{"name": "metrics", "containerPort": 8082, "protocol": "TCP"}],
                "securityContext": {"runAsUser": 1000},
            },
            "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "2"}],
            "modelPort": 8080,
        },
    )
    docs = render(values)
    model = container(docs, "model")
    assert (model["command"], model["args"]) == (["/bin/serve"], ["--port", "8080"])
    assert model["env"] == [
        {"name": "OMP_NUM_THREADS", "value": "2"},
        {"name": "MLSERVER_HTTP_PORT", "value": "8080"},
    ]
    assert model["envFrom"] == [{"configMapRef": {"name": "server-settings"}}]
    assert [p["name"] for p in model["ports"]] == ["http", "grpc", "metrics"]
    assert model["ports"][0]["containerPort"] == 8080
    # Merged over the hardened context, not replacing it.
    assert model["securityContext"]["runAsUser"] == 1000
    assert model["securityContext"]["readOnlyRootFilesystem"] is True
    assert "runAsUser" not in container(docs, "probe")["securityContext"]


# ---- one source of truth for the server command; contradictions refused ------------------------

REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "entrypoint with a server image": (
        {"server": {"image": SERVER_IMAGE}},
        "server.image is for modes injected and sidecar",
    ),
    "injected without a server image": ({"mode": "injected"}, "mode injected runs your server image"),
    "sidecar without a server image": ({"mode": "sidecar"}, "mode sidecar runs your server image"),
    "no tag or digest": (
        {"mode": "injected", "server": {"image": {"repository": "nvcr.io/nvidia/tritonserver"}}},
        "server.image needs a tag or a digest",
    ),
    "injected with server.command": (
        merged(MODES["injected"], {"server": {"command": ["tritonserver"]}}),
        "server.command and server.args are for mode sidecar only: in mode injected",
    ),
    "entrypoint with server.args": (
        {"server": {"args": ["--port", "8000"]}},
        "server.command and server.args are for mode sidecar only: in mode entrypoint",
    ),
    "injected without warmup.server.command": (
        merged(MODES["injected"], {"warmup": {"server": {"command": None}}}),
        "warmup.server.command must name it",
    ),
    "sidecar with another warmup.server.command": (
        merged(MODES["sidecar"], {"warmup": {"server": {"command": ["tritonserver"]}}}),
        "mode sidecar: the kubelet starts the server with server.command/server.args",
    ),
    "pdb with both bounds": (
        {"podDisruptionBudget": {"minAvailable": 1}},
        "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable",
    ),
    "pdb with neither bound": (
        {"podDisruptionBudget": {"maxUnavailable": None}},
        "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_contradictions_fail_with_a_message_that_says_what_to_change(case: str, render: Render) -> None:
    values, message = REFUSED[case]
    with pytest.raises(HelmError) as info:
        render(values)
    assert message in info.value.stderr


@pytest.mark.parametrize(
    "command",
    [None, DEFAULTS["warmup"]["server"]["command"], SERVER_ARGS],
    ids=["null", "chart-default", "same-as-server-args"],
)
def test_sidecar_mode_accepts_a_warmup_command_that_says_nothing_else(command: Any, render: Render) -> None:
    # The chart's default (left as it is), null, or the very command the kubelet runs.
    docs = render(merged(MODES["sidecar"], {"warmup": {"server": {"command": command}}}))
    assert "command" not in rendered_config(docs)["server"]


@pytest.mark.parametrize(
    "values",
    [
        {"mode": "standalone"},
        {"server": {"image": {"pullPolicy": "Sometimes"}}},
        {"server": {"cmd": ["x"]}},
        {"server": {"ports": [{"containerPort": 9000}]}},
        {"inject": {"mountPath": "relative"}},
        {"cache": {"mountPath": "relative/path"}},
        {"podDisruptionBudget": {"maxUnavailable": "half"}},
        {"serviceAccount": {"name": "Not_A_Name"}},
        # A container's command line is a list; warmup.yaml's string form has no place in a pod spec.
        {"mode": "injected", "warmup": {"server": {"command": "tritonserver --model-repository=/models"}}},
    ],
    ids=[
        "mode",
        "pull-policy",
        "unknown-key",
        "unnamed-port",
        "inject-path",
        "cache-path",
        "pdb",
        "sa-name",
        "command-string",
    ],
)
def test_bad_values_fail_the_schema(values: dict[str, Any], render: Render) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
        render(values)


# ---- compile/artifact cache ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_cache_is_mounted_into_the_server_container_with_its_variable(mode: str, render: Render) -> None:
    volume = {"persistentVolumeClaim": {"claimName": "compiled"}}
    docs = render(merged(MODES[mode], {"cache": {"enabled": True, "mountPath": "/cache/", "volume": volume}}))
    model = container(docs, "model")
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["WARMGATE_CACHE_DIR"] == "/cache/"
    assert {"name": "cache", "mountPath": "/cache/"} in model["volumeMounts"]
    assert {"name": "cache", **volume} in pod_spec(docs)["volumes"]
    assert all(m["name"] != "cache" for m in container(docs, "probe")["volumeMounts"])
    derived = set(server_environment(Path("/cache"), {})) - {CACHE_ENV}
    if mode == "sidecar":
        # warmgate does not start this server: the chart sets what warmgate would have exported.
        assert derived <= set(env)
    else:
        assert not derived & set(env), "warmgate derives them when it starts the server"


@pytest.mark.parametrize("given", [{}, {"TRITON_CACHE_DIR": "/data/triton", "CUDA_CACHE_MAXSIZE": "1"}])
def test_sidecar_mode_sets_exactly_what_warmgate_would_export(given: dict[str, str], render: Render) -> None:
    """One list: the chart's variables are warmgate's own (warmgate.artifacts.environment), and an
    explicit setting wins over them in both."""
    server_env = [{"name": k, "value": v} for k, v in given.items()]
    docs = render(
        merged(
            MODES["sidecar"],
            {"cache": {"enabled": True, "mountPath": "/var/cache/wg"}, "server": {"env": server_env}},
        )
    )
    model = container(docs, "model")
    rendered = {e["name"]: e["value"] for e in model["env"]}
    names = [e["name"] for e in model["env"]]
    assert len(names) == len(set(names)), "no variable twice"
    assert {k: v for k, v in rendered.items() if k not in given} == server_environment(
        Path("/var/cache/wg"), given
    )
    assert {k: rendered[k] for k in given} == given


def test_cache_defaults_to_an_empty_dir_and_can_be_read_only(render: Render) -> None:
    assert DEFAULTS["cache"]["enabled"] is False
    assert all(v["name"] != "cache" for v in pod_spec(render())["volumes"])
    docs = render({"cache": {"enabled": True, "readOnly": True}})
    assert {"name": "cache", "emptyDir": {}} in pod_spec(docs)["volumes"]
    mount = next(m for m in container(docs, "model")["volumeMounts"] if m["name"] == "cache")
    assert mount == {"name": "cache", "mountPath": "/var/cache/warmgate", "readOnly": True}


def test_an_image_volume_cache_is_valid_where_kubernetes_has_image_volumes(render: Render) -> None:
    volume = {"image": {"reference": "registry.example.com/ml/compiled:v3", "pullPolicy": "IfNotPresent"}}
    docs = render(merged(MODES["injected"], {"cache": {"enabled": True, "readOnly": True, "volume": volume}}))
    assert {"name": "cache", **volume} in pod_spec(docs)["volumes"]
    for version in IMAGE_VOLUME_VERSIONS:
        validate_rendered(one(docs, "Deployment"), version)
    older = [v for v in KUBE_VERSIONS if v not in IMAGE_VOLUME_VERSIONS]
    if older:
        with pytest.raises(ValueError, match="image"):
            validate_rendered(one(docs, "Deployment"), older[0])


# ---- PodDisruptionBudget -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_default_pdb_evicts_one_pod_at_a_time_and_never_waits_for_a_cold_one(
    mode: str, render: Render
) -> None:
    docs = render(MODES[mode])
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "selector": {"matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]},
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


def test_pdb_min_available_or_off(render: Render) -> None:
    docs = render({"podDisruptionBudget": {"minAvailable": "50%", "maxUnavailable": None}})
    spec = one(docs, "PodDisruptionBudget")["spec"]
    assert spec["minAvailable"] == "50%" and "maxUnavailable" not in spec
    assert not by_kind(render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")
    blue = render({"color": "blue"}, release="demo-blue")
    assert one(blue, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["warmgate.dev/color"] == "blue"


# ---- ServiceAccount: least privilege ---------------------------------------------------------------


TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def token_mounts(docs: list[dict[str, Any]]) -> set[str]:
    spec = pod_spec(docs)
    return {
        item["name"]
        for item in [*spec.get("initContainers", []), *spec["containers"]]
        if any(m["mountPath"] == TOKEN_PATH for m in item.get("volumeMounts", []))
    }


@pytest.mark.parametrize("mode", MODES)
def test_a_created_service_account_mounts_no_token(mode: str, render: Render) -> None:
    docs = render(
        merged(MODES[mode], {"serviceAccount": {"create": True, "annotations": {"a.example/b": "c"}}})
    )
    account = one(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["annotations"] == {"a.example/b": "c"}
    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == account["metadata"]["name"] == "demo-warmgate"
    assert spec["automountServiceAccountToken"] is False
    assert token_mounts(docs) == set()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")


def test_an_existing_service_account_by_name(render: Render) -> None:
    docs = render({"serviceAccount": {"name": "inference"}})
    assert not by_kind(docs, "ServiceAccount")
    assert pod_spec(docs)["serviceAccountName"] == "inference"
    created = render({"serviceAccount": {"name": "inference", "create": True}})
    assert one(created, "ServiceAccount")["metadata"]["name"] == "inference"


@pytest.mark.parametrize("mode", MODES)
def test_the_readiness_gate_binds_its_role_to_the_named_account_and_the_token_reaches_the_sidecar_only(
    mode: str, render: Render
) -> None:
    docs = render(
        merged(MODES[mode], {"readinessGate": {"enabled": True}, "serviceAccount": {"name": "inference"}})
    )
    assert not by_kind(docs, "ServiceAccount")
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "inference", "namespace": "shop"}]
    assert binding["roleRef"]["name"] == one(docs, "Role")["metadata"]["name"] == "demo-warmgate"
    assert pod_spec(docs)["serviceAccountName"] == "inference"
    assert token_mounts(docs) == {"probe"}


# ---- placement, extra volumes, init containers, resources ------------------------------------------


def test_topology_spread_gets_the_release_selector_unless_it_has_one(render: Render) -> None:
    own = {"matchLabels": {"team": "ml"}}
    docs = render(
        {
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"},
                {
                    "maxSkew": 2,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": own,
                },
            ]
        }
    )
    first, second = pod_spec(docs)["topologySpreadConstraints"]
    assert first["labelSelector"] == {
        "matchLabels": one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    }
    assert first["maxSkew"] == 1 and first["whenUnsatisfiable"] == "DoNotSchedule"
    assert second["labelSelector"] == own
    assert "topologySpreadConstraints" not in pod_spec(render())


@pytest.mark.parametrize("mode", MODES)
def test_extra_volumes_mounts_and_init_containers_in_order(mode: str, render: Render) -> None:
    values = merged(MODES[mode], FEATURES["everything"])
    docs = render(values, release="demo-blue")
    spec = pod_spec(docs)
    expected = ["fetch", *(["install-warmgate"] if mode == "injected" else []), "probe"]
    # Weights are fetched first; the native sidecar starts last, right before the model container.
    assert [c["name"] for c in spec["initContainers"]] == expected
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in spec[
        "volumes"
    ]
    assert {"name": "weights", "mountPath": "/mnt/models", "readOnly": True} in container(docs, "model")[
        "volumeMounts"
    ]
    assert all(m["name"] != "weights" for m in container(docs, "probe")["volumeMounts"])


@pytest.mark.parametrize("mode", MODES)
def test_each_container_has_its_own_resources(mode: str, render: Render) -> None:
    values = merged(
        MODES[mode],
        {
            "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}},
            "probe": {"resources": {"requests": {"cpu": "30m"}, "limits": {"memory": "100Mi"}}},
            "inject": {"resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "48Mi"}}},
        },
    )
    docs = render(values)
    assert container(docs, "model")["resources"]["limits"]["memory"] == "8Gi"
    if mode == "sidecar":
        # The sidecar runs the warmup and the load test here: its own, larger default.
        assert container(docs, "probe")["resources"] == DEFAULTS["probe"]["sidecarModeResources"]
        docs = render(merged(values, {"probe": {"sidecarModeResources": {"limits": {"memory": "1Gi"}}}}))
        assert container(docs, "probe")["resources"]["limits"] == {"memory": "1Gi"}
    else:
        assert container(docs, "probe")["resources"]["limits"] == {"memory": "100Mi"}
    if mode == "injected":
        assert container(docs, "install-warmgate")["resources"]["limits"] == {"memory": "48Mi"}


# ---- readiness gate, blue/green, HPA and warm pool in every mode -------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_blue_green_readiness_gate_hpa_and_warm_pool_work_in_every_mode(mode: str, render: Render) -> None:
    values = merged(MODES[mode], FEATURES["readiness-gate"], FEATURES["warm-pool"], {"color": "green"})
    docs = render(values, release="demo-green")
    deployment = one(docs, "Deployment")
    name = deployment["metadata"]["name"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["warmgate.dev/color"] == "green"
    assert pod_spec(docs)["readinessGates"] == [{"conditionType": "warmgate.dev/warm"}]
    assert rendered_config(docs)["probe"]["readiness_gate"]["enabled"] is True
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == name
    (cronjob,) = by_kind(docs, "CronJob")
    assert "replicas" not in deployment["spec"]
    assert cronjob["spec"]["schedule"] == "30 7 * * 1-5"
    selected = [s["spec"]["selector"] for s in by_kind(docs, "Service")]
    assert all(s["warmgate.dev/color"] in ("blue", "green") for s in selected)
