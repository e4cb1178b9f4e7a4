"""The generic HTTP request template (protocol http): placeholders everywhere a request has text,
what `warmgate check` refuses, expectations on the answer, config rules, health."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.protocols.support import server, shape
from warmgate.config import Config, ConfigError, ServerConfig, json_schema, validate_config
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import InvalidResponse, Result, adapters, make_adapter, validate
from warmgate.protocols.base import INVALID
from warmgate.protocols.httptemplate import HttpTemplateAdapter, TemplateError


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
            "spaced": "{{ batch_size }}",
            "keep": "literal text, no placeholder",
        },
    )
    adapter = make_adapter(config)
    the_shape = shape(batch=2, t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hi"})
    request = adapter.build(build_inputs(the_shape), 2)
    assert request.url == "http://127.0.0.1:9/predict"
    assert request.headers["X-Key"] == "k"
    assert request.batch_size == 2
    assert request.body is not None
    assert json.loads(request.body) == {
        "inputs": {"t": [["hi"], ["hi"]]},
        "n": 2,
        "shape": [2, 1],
        "text": "hi",
        "raw": [["hi"], ["hi"]],
        "spaced": 2,
        "keep": "literal text, no placeholder",
    }


def test_placeholders_fill_the_path_query_headers_and_text_inside_body_strings() -> None:
    # The custom server of issue 13: POST /infer?batch=N, the batch size also in a header and a prompt.
    adapter = make_adapter(
        http_server(
            path="/infer/{{value:t}}?batch={{batch_size}}&tag=n{{ batch_size }}",
            headers={"X-Batch": "{{batch_size}}", "X-Text": "say {{value:t}}"},
            body={"prompt": "n={{batch_size}}: {{value:t}}!", "flag": "{{value:b}} and {{value:f}}"},
        )
    )
    inputs = shape(
        batch=8,
        t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "a b/c&d?é"},
        b={"datatype": "BOOL", "dims": [1], "data": "literal", "value": True},
        f={"datatype": "FP32", "dims": [1], "data": "literal", "value": 1.5},
    )
    request = adapter.build(build_inputs(inputs), 8)
    # Text in the path and query is URL-encoded, so it cannot end the segment or start a parameter.
    assert request.url == "http://127.0.0.1:9/infer/a%20b%2Fc%26d%3F%C3%A9?batch=8&tag=n8"
    assert request.headers["X-Batch"] == "8"
    assert request.headers["X-Text"] == "say a b/c&d?é"
    assert request.batch_size == 8
    assert request.body is not None
    # Inside a longer string a placeholder is text: numbers and booleans as JSON spells them.
    assert json.loads(request.body) == {"prompt": "n=8: a b/c&d?é!", "flag": "true and 1.5"}


def test_a_get_fills_its_path_and_sends_no_body() -> None:
    adapter = make_adapter(http_server(method="GET", path="/infer?batch={{batch_size}}"))
    request = adapter.build(build_inputs(shape(batch=4)), 4)
    assert (request.method, request.url, request.body) == ("GET", "http://127.0.0.1:9/infer?batch=4", None)


def test_a_header_value_filled_with_a_line_break_is_refused_when_the_request_is_built() -> None:
    # The config cannot know the text an input will hold; aiohttp would raise on every send.
    adapter = make_adapter(http_server(headers={"X-Text": "{{value:t}}"}))
    lines = shape(t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "one\ntwo"})
    with pytest.raises(
        TemplateError, match=r"^server\.http\.headers\.X-Text: the filled value holds CR, LF or NUL"
    ):
        adapter.build(build_inputs(lines), 2)


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


# ---- check-time errors: what `warmgate check` refuses -------------------------------------------

OIP_LIKE = {"datatype": "FP32", "dims": [2]}


def load(http: dict[str, Any], shapes: Any = None) -> Config:
    raw: dict[str, Any] = {"server": {"protocol": "http", "health_path": "/health", "http": http}}
    if shapes is not None:
        raw["shapes"] = shapes
    return validate_config(raw, "warmup.yaml", {}, protocols=adapters())


TEXT_KNOWN = "{{batch_size}}, {{value:NAME}}"
ALL_KNOWN = "{{payload}}, {{batch_size}}, {{shape}}, {{input:NAME}}, {{value:NAME}}"
JSON_ONLY = "(a tensor or a shape is JSON, which only a body string that is exactly the placeholder takes)"


@pytest.mark.parametrize(
    ("http", "message"),
    [
        (
            {"path": "/infer?batch={{batchsize}}"},
            f"server.http.path: unknown placeholder {{{{batchsize}}}}; known here: {TEXT_KNOWN}",
        ),
        (
            {"path": "/infer/{{payload}}"},
            f"server.http.path: {{{{payload}}}} cannot stand in the path {JSON_ONLY}; "
            f"allowed there: {TEXT_KNOWN}",
        ),
        (
            {"path": "/infer?batch={{batch_size}"},
            "server.http.path: unclosed placeholder {{batch_size} (a '{{' needs its '}}')",
        ),
        (
            {"headers": {"X-Shape": "{{shape}}"}},
            f"server.http.headers.X-Shape: {{{{shape}}}} cannot stand in a header value {JSON_ONLY}; "
            f"allowed there: {TEXT_KNOWN}",
        ),
        (
            {"headers": {"X-Batch": "{{batch}}"}},
            f"server.http.headers.X-Batch: unknown placeholder {{{{batch}}}}; known here: {TEXT_KNOWN}",
        ),
        (
            {"body": {"data": [{"prompt": "n={{batchsize}}"}]}},
            "server.http.body.data[0].prompt: unknown placeholder {{batchsize}}; "
            f"known here: {ALL_KNOWN}",
        ),
        (
            {"body": {"data": "inputs: {{payload}}"}},
            f"server.http.body.data: {{{{payload}}}} cannot stand inside a longer body string {JSON_ONLY}; "
            f"allowed there: {TEXT_KNOWN}",
        ),
        (
            {"body": {"x": "{{input:}}"}},
            f"server.http.body.x: unknown placeholder {{{{input:}}}}; known here: {ALL_KNOWN}",
        ),
        (
            {"body": {"x": "{{batch_size:x}}"}},
            f"server.http.body.x: unknown placeholder {{{{batch_size:x}}}}; known here: {ALL_KNOWN}",
        ),
        (
            {"body": {"inputs": {"{{input:x}}": 1}}},
            "server.http.body.inputs: placeholders are not replaced in mapping keys, got '{{input:x}}'",
        ),
    ],
    ids=[
        "path-unknown",
        "path-tensor",
        "path-unclosed",
        "header-shape",
        "header-unknown",
        "body-unknown-in-text",
        "body-tensor-in-text",
        "body-input-without-name",
        "body-batch-size-with-name",
        "body-key",
    ],
)
def test_a_placeholder_run_could_not_fill_is_a_config_error(http: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(http)
    assert str(caught.value) == f"warmup.yaml: {message}"


def test_an_input_that_a_listed_shape_lacks_is_a_config_error() -> None:
    shapes = [
        {"name": "both", "inputs": {"x": OIP_LIKE, "text": OIP_LIKE}},
        {"name": "only-x", "inputs": {"x": OIP_LIKE}},
    ]
    for http, where in [
        ({"body": {"prompt": "say {{value:text}}"}}, "server.http.body.prompt ({{value:text}})"),
        ({"body": {"data": ["{{input:text}}"]}}, "server.http.body.data[0] ({{input:text}})"),
        ({"path": "/infer/{{value:text}}"}, "server.http.path ({{value:text}})"),
        ({"headers": {"X-Text": "{{ value: text }}"}}, "server.http.headers.X-Text ({{value:text}})"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load(http, shapes)
        assert str(
            caught.value
        ) == f"warmup.yaml: shapes[1].inputs: no input 'text', which {where} names " + (
            "(this shape has 'x')"
        )
    # Every shape has it: accepted; a GET sends no body, so its body names nothing.
    assert load({"body": {"prompt": "{{value:x}}"}}, shapes)
    assert load({"method": "GET", "body": {"prompt": "{{value:text}}"}}, shapes)


def test_with_shapes_auto_an_unknown_input_stays_a_run_time_error() -> None:
    # The inputs come from the model's metadata at run time; the template cannot be checked
    # against them at load (and `shapes: auto` is not for protocol http anyway).
    raw = {"server": {"protocol": "http", "health_path": "/h", "http": {"body": "{{input:nope}}"}}}
    config = validate_config({**raw, "shapes": "auto"}, "warmup.yaml", {})
    assert config.server.http is not None
    adapter = make_adapter(config.server)
    with pytest.raises(
        TemplateError, match=r"^server\.http: \{\{input:nope\}\} names no input of this shape"
    ):
        adapter.build(build_inputs(shape()), 2)


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"field": "batch"}, "server.http.expect[0]: needs exactly one of equals, length; got neither"),
        (
            {"field": "batch", "equals": 1, "length": 1},
            "server.http.expect[0]: needs exactly one of equals, length; got equals, length",
        ),
        (
            {"field": "a..b", "equals": 1},
            "server.http.expect[0].field: must be a dotted path into the answer, like result.scores or "
            "labels.0, got 'a..b'",
        ),
        (
            {"field": "", "equals": 1},
            "server.http.expect[0].field: must be a dotted path into the answer, "
            "like result.scores or labels.0, got ''",
        ),
        (
            {"field": "n{{batch_size}}", "equals": 1},
            "server.http.expect[0].field: placeholders are not replaced in a field, got 'n{{batch_size}}'",
        ),
        (
            {"field": "batch", "equals": "{{batchsize}}"},
            "server.http.expect[0].equals: unknown placeholder {{batchsize}}; known here: {{batch_size}}",
        ),
        (
            {"field": "echo", "equals": {"text": ["{{value:t}}"]}},
            "server.http.expect[0].equals.text[0]: {{value:t}} cannot stand in an expectation (an answer "
            "is checked knowing only the batch size of the request it answers); "
            "allowed there: {{batch_size}}",
        ),
        (
            {"field": "predictions", "length": "{{shape}}"},
            'server.http.expect[0].length: must be a whole number >= 0 or "{{batch_size}}", '
            "got '{{shape}}'",
        ),
        (
            {"field": "predictions", "length": True},
            'server.http.expect[0].length: must be a whole number >= 0 or "{{batch_size}}", got True',
        ),
        (
            {"field": "predictions", "length": -1},
            'server.http.expect[0].length: must be a whole number >= 0 or "{{batch_size}}", got -1',
        ),
        (
            {"field": "predictions", "length": 8, "shape": [8]},
            "server.http.expect[0].shape: unknown field "
            "(check the spelling; `warmgate schema` lists the fields)",
        ),
    ],
    ids=[
        "no-comparison",
        "two-comparisons",
        "empty-segment",
        "empty-field",
        "placeholder-in-field",
        "unknown-placeholder",
        "input-value",
        "length-other-placeholder",
        "length-bool",
        "length-negative",
        "unknown-key",
    ],
)
def test_a_malformed_expectation_is_a_config_error(expect: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"expect": [expect]})
    assert str(caught.value) == f"warmup.yaml: {message}"


def test_the_effective_config_with_expectations_loads_back_the_same() -> None:
    # `warmgate check` prints every field (unset ones as null): that must load back unchanged.
    config = load(
        {
            "path": "/infer?batch={{batch_size}}",
            "expect": [
                {"field": "batch", "equals": "{{batch_size}}"},
                {"field": "predictions", "length": "{{ batch_size }}"},
                {"field": "model.name", "equals": {"name": "m", "size": 3}},
                {"field": "n", "length": 0},
            ],
        }
    )
    dumped = config.model_dump(mode="json")
    assert validate_config(dumped, "printed", {}, protocols=adapters()) == config


def test_the_json_schema_describes_the_expectations() -> None:
    schema = json_schema(adapters())
    expectation = schema["$defs"]["Expectation"]
    assert expectation["required"] == ["field"]
    assert set(expectation["properties"]) == {"field", "equals", "length"}
    assert schema["$defs"]["HttpTemplate"]["properties"]["expect"]["items"] == {"$ref": "#/$defs/Expectation"}
    assert "{{batch_size}}" in schema["$defs"]["HttpTemplate"]["properties"]["path"]["description"]


# ---- expectations on the answer ------------------------------------------------------------------


def expecting(*expect: dict[str, Any], **template: Any) -> HttpTemplateAdapter:
    adapter = make_adapter(http_server(expect=list(expect), **template))
    assert isinstance(adapter, HttpTemplateAdapter)
    return adapter


def test_an_answer_for_another_batch_fails_the_equals_expectation() -> None:
    adapter = expecting({"field": "batch", "equals": "{{batch_size}}"})
    assert adapter.decode(b'{"batch": 8}', batch_size=8) == {}
    assert adapter.decode(b'{"batch": 8.0}', batch_size=8) == {}
    with pytest.raises(InvalidResponse) as caught:
        adapter.decode(b'{"batch": 1, "predictions": [[0.5]]}', batch_size=8)
    assert str(caught.value) == "answer field batch is 1, expected 8 (server.http.expect[0])"


def test_an_answer_with_too_few_items_fails_the_length_expectation() -> None:
    adapter = expecting(
        {"field": "ok", "equals": True},
        {"field": "result.predictions", "length": "{{batch_size}}"},
        output_fields=["result.predictions"],
    )
    answer = b'{"ok": true, "result": {"predictions": [[1], [2], [3]]}}'
    assert adapter.decode(answer, batch_size=3)["result.predictions"].shape == (3, 1)
    with pytest.raises(InvalidResponse) as caught:
        adapter.decode(answer, batch_size=8)
    assert (
        str(caught.value) == "answer field result.predictions has 3 items, expected 8 (server.http.expect[1])"
    )
    with pytest.raises(InvalidResponse) as caught:
        adapter.decode(b'{"ok": true, "result": {"predictions": {"a": 1}}}', batch_size=8)
    assert str(caught.value) == (
        "answer field result.predictions is a JSON object, expected a list of 8 items (server.http.expect[1])"
    )


@pytest.mark.parametrize(
    ("expect", "answer", "message"),
    [
        ({"field": "batch", "equals": 8}, b'{"size": 8}', "answer lacks field batch (server.http.expect[0])"),
        (
            {"field": "items.2", "equals": 8},
            b'{"items": [8]}',
            "answer lacks field items.2 (server.http.expect[0])",
        ),
        # Not an index (int() refuses "--1"): a field the answer lacks, not an exception.
        (
            {"field": "items.--1", "equals": 8},
            b'{"items": [8]}',
            "answer lacks field items.--1 (server.http.expect[0])",
        ),
        # A boolean is not a number, a string is not a number: JSON equality, not Python's.
        (
            {"field": "n", "equals": 1},
            b'{"n": true}',
            "answer field n is true, expected 1 (server.http.expect[0])",
        ),
        (
            {"field": "n", "equals": "{{batch_size}}"},
            b'{"n": "8"}',
            "answer field n is '8', expected 8 (server.http.expect[0])",
        ),
        (
            {"field": "status", "equals": "ok"},
            b'{"status": "error"}',
            "answer field status is 'error', expected 'ok' (server.http.expect[0])",
        ),
        (
            {"field": "note", "equals": "ran {{batch_size}} rows"},
            b'{"note": "ran 1 rows"}',
            "answer field note is 'ran 1 rows', expected 'ran 8 rows' (server.http.expect[0])",
        ),
        (
            {"field": "shape", "equals": ["{{batch_size}}", 2]},
            b'{"shape": [1, 2]}',
            "answer field shape is [1, 2], expected [8, 2] (server.http.expect[0])",
        ),
        (
            {"field": "n", "equals": 8},
            b"not json",
            "response is not JSON (Expecting value: line 1 column 1 (char 0))",
        ),
    ],
    ids=[
        "missing",
        "index-out-of-range",
        "not-an-index",
        "bool-not-int",
        "string-not-int",
        "string",
        "text",
        "list",
        "not-json",
    ],
)
def test_an_answer_that_misses_an_expectation_is_invalid(
    expect: dict[str, Any], answer: bytes, message: str
) -> None:
    with pytest.raises(InvalidResponse) as caught:
        expecting(expect).decode(answer, batch_size=8)
    assert str(caught.value) == message


def test_expectations_hold_for_matching_answers() -> None:
    adapter = expecting(
        {"field": "note", "equals": "ran {{batch_size}} rows"},
        {"field": "shape", "equals": ["{{batch_size}}", 2]},
        {"field": "meta", "equals": {"ok": True, "n": 2.0}},
        {"field": "rows.-1", "length": 0},
    )
    answer = b'{"note": "ran 4 rows", "shape": [4, 2], "meta": {"n": 2, "ok": true}, "rows": [[1], []]}'
    assert adapter.decode(answer, batch_size=4) == {}


def test_validate_checks_an_answer_against_the_batch_size_of_the_request_it_answers() -> None:
    # The engine's path: build -> send -> validate; the request carries the shape's batch size.
    adapter = expecting({"field": "batch", "equals": "{{batch_size}}"})
    request = adapter.build(build_inputs(shape(batch=8)), 8)
    answered = Result(0.01, "", 200, b'{"batch": 1}', request=request)
    failed, outputs = validate(adapter, answered)
    assert outputs is None and failed.kind == INVALID
    assert failed.message == 'answer field batch is 1, expected 8 (server.http.expect[0]): {"batch": 1}'
    passed, outputs = validate(adapter, Result(0.01, "", 200, b'{"batch": 8}', request=request))
    assert passed.ok and outputs == {}


def test_field_names_from_the_config_print_on_one_line() -> None:
    adapter = expecting({"field": "a\u2028b", "equals": 1})
    with pytest.raises(InvalidResponse) as caught:
        adapter.decode(b'{"x": 1}', batch_size=1)
    assert str(caught.value) == "answer lacks field a\\u2028b (server.http.expect[0])"
