"""Config fields added for the engine: validation errors are one line naming the path."""

from __future__ import annotations

import pytest

from warmgate.config import ConfigError, validate_config
from warmgate.protocols import adapters


def error(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw, "warmup.yaml", {}, protocols=adapters())
    return str(caught.value)


def test_defaults() -> None:
    config = validate_config({}, "warmup.yaml", {})
    check = config.concurrency_check
    assert (check.enabled, check.fraction, check.variants, check.rtol, check.atol) == (
        True,
        0.25,
        4,
        1e-3,
        1e-5,
    )
    assert config.gate.ratio_floor_ms == 5.0
    assert config.gate.max_mismatches == 0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"concurrency_check": {"fraction": 0}},
            "warmup.yaml: concurrency_check.fraction: must be > 0, got 0",
        ),
        (
            {"concurrency_check": {"fraction": 1.5}},
            "warmup.yaml: concurrency_check.fraction: must be <= 1, got 1.5",
        ),
        (
            {"concurrency_check": {"variants": 0}},
            "warmup.yaml: concurrency_check.variants: must be > 0, got 0",
        ),
        ({"concurrency_check": {"rtol": -1}}, "warmup.yaml: concurrency_check.rtol: must be >= 0, got -1"),
        ({"concurrency_check": {"tolerance": 1}}, "warmup.yaml: concurrency_check.tolerance: unknown field"),
        ({"gate": {"ratio_floor_ms": -1}}, "warmup.yaml: gate.ratio_floor_ms: must be >= 0, got -1"),
        (
            {"shapes": "auto", "server": {"protocol": "tfserving"}},
            "warmup.yaml: shapes: auto needs server.protocol oip or oip-grpc (model metadata), got tfserving",
        ),
    ],
)
def test_bad_values_are_one_line_errors(raw: dict[str, object], message: str) -> None:
    text = error(raw)
    assert text.startswith(message)
    assert "\n" not in text


def test_a_shape_opts_out_of_the_comparison() -> None:
    config = validate_config(
        {"shapes": [{"name": "sample", "inputs": {"x": {"dims": [1]}}, "compare": False}]}, "warmup.yaml", {}
    )
    assert isinstance(config.shapes, list) and config.shapes[0].compare is False
