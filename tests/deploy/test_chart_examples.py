"""The chart's values examples for model servers in their own images (deploy/helm/examples/):
Triton, MLServer / a KServe custom predictor, TorchServe (native and KServe mode) and TF Serving.
Each renders with the real helm into objects valid for every supported Kubernetes version (the
monitors against the Prometheus Operator CRDs), passes `helm lint --strict`, carries a valid
warmup.yaml for its protocol, and wires the server's ports, command and drain as its mode says.
The LLM servers' examples (vLLM, TGI) are tested in test_llm_values.py.

None of these servers runs here (GPU images, model repositories): these check the manifests and the
configuration, not a deployment (tests/deploy/test_container.py runs foreign images in podman).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy import test_llm_values
from tests.deploy.chart_support import KUBE_VERSIONS, by_kind, container, one, pod_spec, validate_rendered
from tests.deploy.conftest import CHART, REPO, Render, run_helm
from warmgate.config import validate_config

EXAMPLES = REPO / "deploy" / "helm" / "examples"
# values file -> (mode, protocol, the server's executable: the first word of its command)
CASES = {
    "triton-values.yaml": ("injected", "oip", "tritonserver"),
    "mlserver-values.yaml": ("sidecar", "oip", "mlserver"),
    "torchserve-values.yaml": ("injected", "torchserve", "torchserve"),
    "torchserve-kserve-values.yaml": ("sidecar", "oip", "torchserve"),
    "tfserving-values.yaml": ("injected", "tfserving", "tensorflow_model_server"),
}


def values(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def test_every_values_example_is_tested_here_or_with_the_llm_examples() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted([*CASES, *test_llm_values.CASES])
    modes = {mode for mode, _, _ in CASES.values()}
    assert modes == {"injected", "sidecar"}, "both ways of running an unchanged server image are shown"


@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_valid_objects_for_every_kubernetes_version(name: str, render: Render) -> None:
    docs = render(values(name), kube_version=KUBE_VERSIONS[0])
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= {d["kind"] for d in docs}
    assert by_kind(docs, "PodMonitor") or by_kind(docs, "ServiceMonitor")
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_rendered(doc, version)


@pytest.mark.parametrize("name", sorted([*CASES, *test_llm_values.CASES]))
def test_helm_lint_strict(name: str, helm: str, tmp_path: Path) -> None:
    done = run_helm(helm, ["lint", "--strict", str(CHART), "-f", str(EXAMPLES / name)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_server_runs_its_own_image_with_the_command_its_mode_gives_it(name: str, render: Render) -> None:
    mode, protocol, executable = CASES[name]
    given = values(name)
    assert given["mode"] == mode
    docs = render(given)
    raw = yaml.safe_load(one(docs, "ConfigMap")["data"]["warmup.yaml"])
    config = validate_config(raw, f"{name} (ConfigMap)", {})
    assert config.server.protocol == protocol
    model = container(docs, "model")
    image = given["server"]["image"]
    assert model["image"] == f"{image['repository']}:{image['tag']}"
    # warmgate's own image runs the sidecar (and the bundle copy), never the -gpu variant.
    assert container(docs, "probe")["image"] == "warmgate/warmgate:0.1.0"
    if mode == "injected":
        assert model["command"][:3] == ["/warmgate/warmgate", "run", "--"]
        server_argv = model["command"][3:]
        assert server_argv == list(config.server.command)
        assert container(docs, "install-warmgate")["command"] == [
            "cp",
            "-R",
            "/opt/warmgate-bundle/.",
            "/warmgate/",
        ]
        assert "lifecycle" not in model
    else:
        server_argv = [*model.get("command", []), *model.get("args", [])]
        assert server_argv == [*given["server"].get("command", []), *given["server"].get("args", [])]
        assert "command" not in raw["server"], "warmgate does not start the server in mode sidecar"
        assert model["lifecycle"]["preStop"]["httpGet"] == {
            "path": "/drain",
            "port": given["probe"]["port"] if "probe" in given else 8086,
        }
    assert server_argv[0] == executable


@pytest.mark.parametrize("name", sorted(CASES))
def test_ports_agree_between_the_server_warmgate_and_the_service(name: str, render: Render) -> None:
    given = values(name)
    docs = render(given)
    raw = yaml.safe_load(one(docs, "ConfigMap")["data"]["warmup.yaml"])
    url = urlsplit(raw["server"]["url"])
    # warmgate and the sidecar reach the server on loopback, at the port the Service targets.
    assert url.hostname == "127.0.0.1" and url.port == given["modelPort"]
    model = container(docs, "model")
    ports = {p["name"]: p["containerPort"] for p in model["ports"]}
    assert ports["http"] == given["modelPort"]
    assert ("grpc" in ports) == bool(given["grpcPort"])
    server = given.get("metrics", {}).get("server", {})
    if server.get("enabled", True):
        assert server.get("port", "http") in ports, "the monitors scrape a port the container names"
    if given["mode"] == "injected":
        command = raw["server"]["command"]
        if command[0] == "torchserve":
            # TorchServe takes its addresses from config.properties (the image's listens on
            # 0.0.0.0:8080/8081/8082), not from flags.
            assert "--ts-config" in command and given["modelPort"] == 8080
        else:
            # The command the injected warmgate starts listens where warmup.server.url points.
            assert any(str(given["modelPort"]) in arg for arg in command)


@pytest.mark.parametrize("name", sorted(CASES))
def test_weights_come_from_a_volume_and_the_budget_covers_the_start(name: str, render: Render) -> None:
    given = values(name)
    docs = render(given)
    volumes = {v["name"] for v in pod_spec(docs)["volumes"]}
    mounts = {m["name"] for m in container(docs, "model")["volumeMounts"]}
    extra = {v["name"] for v in given["extraVolumes"]}
    assert extra <= volumes and extra <= mounts
    warmup = given["warmup"]
    assert warmup["startupBudgetSeconds"] > warmup["server"]["start_timeout_s"]


def test_triton_sends_binary_tensors_like_its_clients(render: Render) -> None:
    raw = yaml.safe_load(one(render(values("triton-values.yaml")), "ConfigMap")["data"]["warmup.yaml"])
    assert raw["server"]["binary_tensors"] is True
    assert "--http-port=8000" in raw["server"]["command"]
