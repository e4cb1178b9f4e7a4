"""The generic HTTP request template (protocol http): requests, answers, config rules, health."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.protocols.support import server, shape
from warmgate.config import ConfigError, ServerConfig
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import InvalidResponse, make_adapter
from warmgate.protocols.httptemplate import TemplateError


def http_server(**template: Any) -> ServerConfig:
    return server("http", health_path="/health", http=template)


def test_http_template_substitutes_placeholders() -> None:
    config = http_server(
        path="/predict",
        headers={"X-Key": "k"},
        body={
            "inputs": "{{payload}}",
            "n": "{{batch_size}}",
            "shape": "{{shape}}",
            "text": "{{value:t}}",
            "raw": "{{input:t}}",
            "keep": "literal {{payload}} inside is not a placeholder",
        },
    )
    adapter = make_adapter(config)
    the_shape = shape(batch=2, t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hi"})
    request = adapter.build(build_inputs(the_shape), 2)
    assert request.url == "http://127.0.0.1:9/predict"
    assert request.headers["X-Key"] == "k"
    assert request.body is not None
    assert json.loads(request.body) == {
        "inputs": {"t": [["hi"], ["hi"]]},
        "n": 2,
        "shape": [2, 1],
        "text": "hi",
        "raw": [["hi"], ["hi"]],
        "keep": "literal {{payload}} inside is not a placeholder",
    }


def test_http_template_unknown_input_is_an_error() -> None:
    adapter = make_adapter(http_server(body={"x": "{{input:nope}}"}))
    with pytest.raises(TemplateError, match=r"\{\{input:nope\}\} names no input"):
        adapter.build(build_inputs(shape()), 2)


def test_http_output_fields_are_checked_and_compared() -> None:
    adapter = make_adapter(http_server(output_fields=["result.scores", "labels.0"]))
    assert adapter.comparable
    outputs = adapter.parse(b'{"result": {"scores": [0.1, 0.9]}, "labels": ["cat", "dog"]}')
    assert outputs["result.scores"].data == [0.1, 0.9]
    assert outputs["labels.0"].data == ["cat"]
    with pytest.raises(InvalidResponse, match=r"response lacks output field result\.scores"):
        adapter.parse(b'{"result": {}}')


def test_http_without_output_fields_accepts_any_answer_and_is_not_comparable() -> None:
    adapter = make_adapter(http_server())
    assert not adapter.comparable
    assert adapter.parse(b"anything at all") == {}


@pytest.mark.parametrize(
    "extra", [{"health_path": "/health"}, {"http": {}}, {}], ids=["no template", "no health path", "neither"]
)
def test_needs_a_template_and_a_health_path(extra: dict[str, Any]) -> None:
    incomplete = ServerConfig.model_validate({"url": "http://127.0.0.1:9", "protocol": "http", **extra})
    with pytest.raises(
        ConfigError, match=r"^server: protocol http needs both server.http .* and server.health_path$"
    ):
        make_adapter(incomplete)


def test_health_is_the_configured_path() -> None:
    adapter = make_adapter(http_server())
    assert [e.url for e in adapter.readiness_endpoints()] == ["http://127.0.0.1:9/health"]
    assert adapter.liveness_endpoint().url == "http://127.0.0.1:9/health"
    assert not adapter.supports_auto_shapes()
