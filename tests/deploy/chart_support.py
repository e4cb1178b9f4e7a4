"""Helpers shared by the chart tests: the rendered objects by kind, and validation of every object
the chart renders, Prometheus Operator monitors included (against the vendored CRD schemas in
tests/deploy/schemas/prometheus-operator, since kubernetes-validate knows no CRDs).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import jsonschema
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from tests.deploy.conftest import REPO
from tests.support.fake_kube import validate_object

# Kubernetes 1.29 (native sidecars on by default) up to the newest the validator ships.
KUBE_VERSIONS = [v for v in all_versions() if major_minor(v) >= major_minor("1.29.0")]
# Image volumes (volumes[].image): alpha behind a feature gate from 1.31, beta from 1.33.
IMAGE_VOLUME_VERSIONS = [v for v in KUBE_VERSIONS if major_minor(v) >= major_minor("1.31.0")]

CRD_SCHEMAS = REPO / "tests" / "deploy" / "schemas" / "prometheus-operator"
MONITOR_KINDS = {"ServiceMonitor": "servicemonitor.json", "PodMonitor": "podmonitor.json"}


def closed(schema: Any) -> Any:
    """The schema with every object that names its properties closed to others: the API server
    prunes unknown fields of a custom resource silently, so a typo would pass unnoticed."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@cache
def monitor_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads((CRD_SCHEMAS / MONITOR_KINDS[kind]).read_text())
    # apiVersion/kind/metadata are checked by the API server itself, not by the CRD's schema.
    schema = closed(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def validate_monitor(obj: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when obj is not a valid monitoring.coreos.com/v1 object."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", obj["apiVersion"]
    errors = sorted(monitor_validator(obj["kind"]).iter_errors(copy.deepcopy(dict(obj))), key=str)
    if errors:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        details = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)
        raise ValueError(f"{where}: {details}")


def validate_rendered(obj: Mapping[str, Any], version: str) -> None:
    """Any object the chart renders: Kubernetes' own kinds strictly, the monitors against their CRD."""
    if obj["kind"] in MONITOR_KINDS:
        validate_monitor(obj)
    else:
        validate_object(obj, version)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = pod_spec(docs)
    for item in [*spec.get("initContainers", []), *spec["containers"]]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name}")


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(one(docs, "ConfigMap")["data"]["warmup.yaml"])
    return config
