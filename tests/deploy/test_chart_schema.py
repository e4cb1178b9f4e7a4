"""values.schema.json is generated from the pydantic config model and must stay in step with it.

If this fails after a change to entrypoint/config.py, run: python deploy/helm/generate_schema.py
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.conftest import CHART, REPO
from warmgate.config import Config, validate_config

GENERATOR = REPO / "deploy" / "helm" / "generate_schema.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_schema", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return loaded


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def test_committed_schema_is_generated_from_the_current_config_model() -> None:
    generated = load_generator().render()
    committed = (CHART / "values.schema.json").read_text()
    assert committed == generated, "values.schema.json is stale: run python deploy/helm/generate_schema.py"


def test_check_mode_agrees() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


# Keys of the `warmup` values that the chart reads and leaves out of the rendered warmup.yaml.
CHART_ONLY_WARMUP_KEYS = {"startupBudgetSeconds", "allowNoSlo"}


def test_warmup_section_is_the_config_model(schema: dict[str, Any]) -> None:
    warmup = schema["properties"]["warmup"]
    assert set(warmup["properties"]) == {*CHART_ONLY_WARMUP_KEYS, *Config.model_fields}
    assert warmup["additionalProperties"] is False
    assert "startupBudgetSeconds" in warmup["required"]
    assert warmup["properties"]["allowNoSlo"]["type"] == "boolean"


def test_schema_is_draft07_for_helm3(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    text = json.dumps(schema)
    assert "$defs" not in text, "helm 3's validator resolves only #/definitions"
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_default_values_pass_the_schema_and_the_config_model(
    schema: dict[str, Any], values: dict[str, Any]
) -> None:
    jsonschema.Draft7Validator(schema).validate(values)
    warmup = {k: v for k, v in values["warmup"].items() if k not in CHART_ONLY_WARMUP_KEYS}
    config = validate_config(warmup, "values.yaml warmup", {})
    # The defaults state an SLO rather than opting out of one (the chart demands one or the other).
    assert config.gate.p95_ms is not None and values["warmup"]["allowNoSlo"] is False


def test_the_repository_default_config_fits_the_warmup_values(
    schema: dict[str, Any], values: dict[str, Any]
) -> None:
    # warmup.yaml at the repository root can be pasted under `warmup:` as it is.
    default_config = yaml.safe_load((REPO / "warmup.yaml").read_text())
    candidate = copy.deepcopy(values)
    candidate["warmup"] = {"startupBudgetSeconds": 600, **default_config}
    jsonschema.Draft7Validator(schema).validate(candidate)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"batch_size": -1}, ["warmup", "shapes", 0, "batch_size"]),
        ({"inputs": {"x": {"dims": [0]}}}, ["warmup", "shapes", 0, "inputs", "x", "dims", 0]),
        ({"weight": -2}, ["warmup", "shapes", 0, "weight"]),
        ({"extra": 1}, ["warmup", "shapes", 0]),
    ],
)
def test_bad_shapes_fail_the_schema(
    change: dict[str, Any], path: list[Any], schema: dict[str, Any], values: dict[str, Any]
) -> None:
    candidate = copy.deepcopy(values)
    candidate["warmup"]["shapes"][0].update(change)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(candidate))
    assert errors
    # The shapes anyOf ("auto" | list) reports through its branches; the list branch names the field.
    deepest = max(
        (e for error in errors for e in [error, *(error.context or [])]), key=lambda e: len(e.absolute_path)
    )
    assert list(deepest.absolute_path) == path
