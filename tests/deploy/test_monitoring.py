"""The chart's Prometheus Operator monitors (PodMonitor, ServiceMonitor and its headless metrics
Service), rendered by the real helm and validated against the vendored CRD schemas
(tests/deploy/schemas/prometheus-operator) and the Kubernetes schemas."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.chart_support import (
    KUBE_VERSIONS,
    by_kind,
    container,
    one,
    validate_monitor,
    validate_rendered,
)
from tests.deploy.conftest import HelmError, Render

BOTH: dict[str, Any] = {"metrics": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}}
TRITON_METRICS: dict[str, Any] = {
    "mode": "injected",
    "server": {
        "image": {"repository": "nvcr.io/nvidia/tritonserver", "tag": "24.08-py3"},
        "ports": [{"name": "metrics", "containerPort": 8002, "protocol": "TCP"}],
    },
    "metrics": {
        "server": {"port": "metrics", "path": "/metrics"},
        "podMonitor": {
            "enabled": True,
            "interval": "15s",
            "scrapeTimeout": "5s",
            "labels": {"release": "kps"},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    },
}
CASES: dict[str, dict[str, Any]] = {
    "both": BOTH,
    "native-sidecar": {**BOTH, "probe": {"nativeSidecar": True}},
    "blue": {**BOTH, "color": "blue"},
    "sidecar-only metrics": {
        "metrics": {**BOTH["metrics"], "server": {"enabled": False}},
    },
    "server metrics port": TRITON_METRICS,
}


def test_no_monitor_and_no_metrics_service_by_default(render: Render) -> None:
    docs = render()
    assert not by_kind(docs, "PodMonitor") and not by_kind(docs, "ServiceMonitor")
    roles = [s["metadata"]["labels"].get("warmgate.dev/service-role") for s in by_kind(docs, "Service")]
    assert roles == ["stable"]


@pytest.mark.parametrize("case", CASES)
def test_monitors_are_valid_against_the_crds_and_every_kubernetes_version(case: str, render: Render) -> None:
    docs = render(CASES[case])
    assert {"PodMonitor", "ServiceMonitor"} <= {d["kind"] for d in docs}
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate_rendered(doc, version)


def container_ports(docs: list[dict[str, Any]], name: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(docs, name).get("ports", [])}


@pytest.mark.parametrize("case", CASES)
def test_pod_monitor_scrapes_the_sidecar_and_the_server_ports_of_this_release(
    case: str, render: Render
) -> None:
    values = CASES[case]
    docs = render(values, release="demo-blue" if values.get("color") else "demo")
    monitor = one(docs, "PodMonitor")
    deployment = one(docs, "Deployment")
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints[0]["port"] == "probe" and endpoints[0]["path"] == "/metrics"
    assert "probe" in container_ports(docs, "probe")
    server = values["metrics"].get("server", {})
    if server.get("enabled", True):
        assert len(endpoints) == 2
        port = server.get("port", "http")
        assert endpoints[1] == {
            "port": port,
            "path": server.get("path", "/metrics"),
            "interval": values["metrics"]["podMonitor"].get("interval", "30s"),
            "scrapeTimeout": values["metrics"]["podMonitor"].get("scrapeTimeout", "10s"),
        }
        assert port in container_ports(docs, "model")
    else:
        assert len(endpoints) == 1
    for key, value in values["metrics"]["podMonitor"].get("labels", {}).items():
        assert monitor["metadata"]["labels"][key] == value


@pytest.mark.parametrize("case", CASES)
def test_service_monitor_selects_only_the_headless_metrics_service(case: str, render: Render) -> None:
    values = CASES[case]
    docs = render(values, release="demo-blue" if values.get("color") else "demo")
    monitor = one(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = by_kind(docs, "Service")
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == [
        one(docs, "Deployment")["metadata"]["name"] + "-metrics"
    ]
    (metrics,) = selected
    # Headless and publishing warming pods: no traffic goes through it, every pod is scraped.
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert metrics["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    # Each endpoint names a port of the metrics Service, which targets a named container port.
    service_ports = {p["name"]: p for p in metrics["spec"]["ports"]}
    ports = {**container_ports(docs, "model"), **container_ports(docs, "probe")}
    for endpoint in monitor["spec"]["endpoints"]:
        port = service_ports[endpoint["port"]]
        assert port["targetPort"] == endpoint["port"]
        assert port["port"] == ports[endpoint["port"]]


def test_an_unknown_server_metrics_port_fails_with_a_message(render: Render) -> None:
    values = copy.deepcopy(TRITON_METRICS)
    values["server"]["ports"] = []
    with pytest.raises(HelmError) as info:
        render(values)
    assert 'metrics.server.port "metrics" names no port of the model container' in info.value.stderr


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(intervall="30s"), "intervall"),
        (lambda m: m["spec"]["podMetricsEndpoints"][0].update(interval="half a minute"), "interval"),
        (lambda m: m["spec"].update(selector="app=demo"), "selector"),
    ],
    ids=["typo", "bad-duration", "bad-type"],
)
def test_the_crd_validation_refuses_what_the_api_server_would(
    change: Any, field: str, render: Render
) -> None:
    monitor = copy.deepcopy(one(render(BOTH), "PodMonitor"))
    validate_monitor(monitor)
    change(monitor)
    with pytest.raises(ValueError, match=field):
        validate_monitor(monitor)


def test_bad_monitor_values_fail_the_schema(render: Render) -> None:
    for bad in ({"interval": "30 seconds"}, {"enabled": "yes"}, {"typo": 1}):
        with pytest.raises(HelmError, match="values don't meet the specifications of the schema"):
            render({"metrics": {"podMonitor": bad}})
