"""The chart's LLM values examples (deploy/helm/examples/{vllm,tgi}-values.yaml) render with the real
helm into valid objects for every supported Kubernetes version, their warmup section is a valid
warmup.yaml, and it is the same configuration as the matching examples/*.yaml (one source of
truth for the shapes a chat service would pick; the two files must not drift apart).

vLLM and TGI cannot run here (GPU servers, hub weights): these check the manifests and the
configuration, not a deployment.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from tests.deploy.conftest import REPO, Render
from tests.support.fake_kube import validate_object
from warmgate.config import validate_config

EXAMPLES = REPO / "deploy" / "helm" / "examples"
KUBE_VERSIONS = [v for v in all_versions() if major_minor(v) >= major_minor("1.29.0")]
# values file -> (the warmup example it mirrors, the server's executable, the GPU resource)
CASES = {
    "vllm-values.yaml": ("vllm-chat.yaml", "vllm"),
    "tgi-values.yaml": ("tgi-chat.yaml", "text-generation-launcher"),
}
# What the chart owns in warmup.yaml (set from other values), and what only the chart reads.
CHART_SET = {"state_dir", "probe"}
CHART_ONLY = {"startupBudgetSeconds", "allowNoSlo"}


def values(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


def rendered(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def model_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec = rendered(docs, "Deployment")["spec"]["template"]["spec"]
    (model,) = [c for c in spec["containers"] if c["name"] == "model"]
    return dict(model)


def test_the_llm_values_examples_exist() -> None:
    # test_chart_examples.py checks that every example is tested there or here.
    assert set(CASES) <= {p.name for p in EXAMPLES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_valid_objects_for_every_kubernetes_version(name: str, render: Render) -> None:
    docs = render(values(name), kube_version=KUBE_VERSIONS[0])
    assert {"ConfigMap", "Deployment", "Service"} <= {d["kind"] for d in docs}
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_object(doc, version)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_warmup_is_a_valid_openai_config_running_the_server(name: str, render: Render) -> None:
    _, executable = CASES[name]
    given = values(name)
    docs = render(given)
    raw = yaml.safe_load(rendered(docs, "ConfigMap")["data"]["warmup.yaml"])
    config = validate_config(raw, f"{name} (ConfigMap)", {})
    assert config.server.protocol == "openai"
    assert config.shapes and all(getattr(shape, "prompt", None) is not None for shape in config.shapes)
    model = model_container(docs)
    # The server's own image, unchanged: the injected warmgate bundle starts the server.
    assert given["mode"] == "injected"
    assert model["command"] == ["/warmgate/warmgate", "run", "--", *config.server.command]
    assert model["command"][3] == executable
    image = given["server"]["image"]
    assert model["image"] == f"{image['repository']}:{image['tag']}"
    gpu = given["gpu"]
    assert model["resources"]["limits"][gpu.get("resourceName", "nvidia.com/gpu")] == gpu["count"]
    # The server listens for the Service on the port the chart exposes.
    assert str(given["modelPort"]) in model["command"] and "0.0.0.0" in model["command"]
    assert model["ports"][0]["containerPort"] == given["modelPort"]


def example_config(name: str) -> dict[str, Any]:
    example, _ = CASES[name]
    config: dict[str, Any] = yaml.safe_load((REPO / "examples" / example).read_text())
    return {k: v for k, v in config.items() if k not in CHART_SET}


@pytest.mark.parametrize("name", sorted(CASES))
def test_warmup_section_is_the_matching_example_config(name: str) -> None:
    warmup = {k: v for k, v in values(name)["warmup"].items() if k not in CHART_ONLY}
    gate = warmup["gate"]
    assert gate.pop("p95_ms", "absent") is None, "the chart's default request-latency SLO is removed"
    assert example_config(name) == warmup


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_warmup_is_the_example_config_with_no_chart_default_leaking_in(
    name: str, render: Render
) -> None:
    """helm merges the values into the chart's defaults: a default the example does not set
    (like the demo model's gate.p95_ms) must not end up in the LLM server's gate."""
    raw = yaml.safe_load(rendered(render(values(name)), "ConfigMap")["data"]["warmup.yaml"])
    example = example_config(name)
    for section, expected in example.items():
        if section == "load_test":
            # The other loop mode's key from the chart's defaults is inert.
            assert expected.items() <= raw[section].items()
        else:
            assert raw[section] == expected, section


@pytest.mark.parametrize("name", sorted(CASES))
def test_startup_budget_covers_the_server_start_and_the_streams_get_their_grace(name: str) -> None:
    warmup = values(name)["warmup"]
    assert warmup["startupBudgetSeconds"] > warmup["server"]["start_timeout_s"]
    # The longest streamed answer at the ITL SLO finishes within the drain's grace period.
    longest = max(s["prompt"]["max_tokens"] for s in warmup["shapes"] if s["prompt"]["stream"])
    assert longest * warmup["gate"]["itl_p95_ms"] / 1000 <= warmup["drain"]["grace_period_s"]
