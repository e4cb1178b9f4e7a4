"""Each protocol adapter: the request it builds for a shape and how it reads an answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from warmgate.config import AutoShapes, ServerConfig, Shape
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import InvalidResponse, MetadataError, TemplateError, make_adapter
from warmgate.protocols.oip import shapes_from_metadata


def server(protocol: str = "oip", **extra: Any) -> ServerConfig:
    return ServerConfig.model_validate(
        {"url": "http://127.0.0.1:9", "protocol": protocol, "model": "m", **extra}
    )


def shape(batch: int = 2, **inputs: dict[str, Any]) -> Shape:
    inputs = inputs or {"x": {"datatype": "FP32", "dims": [2], "data": "literal", "value": [1.5, 2.5]}}
    return Shape.model_validate({"name": "s", "batch_size": batch, "inputs": inputs})


def body(protocol: str, the_shape: Shape, **extra: Any) -> Any:
    adapter = make_adapter(server(protocol, **extra))
    request = adapter.build(build_inputs(the_shape), the_shape.batch_size)
    assert request.body is not None
    return request, json.loads(request.body) if request.headers[
        "Content-Type"
    ] == "application/json" else request.body


# ---- Open Inference Protocol -------------------------------------------------------------------


def test_oip_request_has_batch_in_shape_and_flat_data() -> None:
    request, document = body(
        "oip",
        shape(
            x={"datatype": "FP16", "dims": [2], "data": "literal", "value": [0.5, 0.25]},
            t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hi"},
            b={"datatype": "BOOL", "dims": [1], "data": "literal", "value": True},
        ),
    )
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9/v2/models/m/infer"
    assert document == {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP16", "data": [0.5, 0.25, 0.5, 0.25]},
            {"name": "t", "shape": [2, 1], "datatype": "BYTES", "data": ["hi", "hi"]},
            {"name": "b", "shape": [2, 1], "datatype": "BOOL", "data": [True, True]},
        ]
    }


def test_oip_versioned_url_and_unbatched_shape() -> None:
    request, document = body("oip", shape(batch=0), model_version="3")
    assert request.url.endswith("/v2/models/m/versions/3/infer")
    assert document["inputs"][0]["shape"] == [2]


def test_oip_parse_reads_outputs_flat_or_nested() -> None:
    adapter = make_adapter(server())
    outputs = adapter.parse(
        b'{"outputs": [{"name": "y", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}'
    )
    assert outputs["y"].data == [1, 2, 3, 4]
    assert outputs["y"].shape == (2, 2)
    assert outputs["y"].datatype == "INT64"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b'{"model_name": "m", "outputs": []}', "response has no outputs"),
        (b'{"model_name": "m"}', "response has no outputs"),
        (b'{"error": "bad input"}', "response carries an error: bad input"),
        (b"<html>oops</html>", "response is not JSON"),
        (b'{"outputs": [{"name": "y"}]}', "output 0 has no data"),
    ],
)
def test_oip_parse_rejects_answers_without_outputs(answer: bytes, message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        make_adapter(server()).parse(answer)


def test_metadata_with_batch_dimension_gives_one_shape_per_batch_size() -> None:
    metadata = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}]}
    shapes = shapes_from_metadata(metadata, AutoShapes(batch_sizes=[1, 8], dynamic_dim=16), "u")
    assert [(s.name, s.batch_size) for s in shapes] == [("auto-bs1", 1), ("auto-bs8", 8)]
    assert shapes[0].inputs["ids"].dims == [16]
    assert shapes[0].inputs["ids"].datatype == "INT64"


def test_metadata_without_batch_dimension_gives_one_unbatched_shape() -> None:
    metadata = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4]}]}
    [only] = shapes_from_metadata(metadata, AutoShapes(), "u")
    assert only.batch_size == 0
    assert only.inputs["x"].dims == [3, 4]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "m", "inputs": []}, "model metadata lists no inputs; list shapes in warmup.yaml instead"),
        ({"name": "m"}, "lists no inputs"),
        ({"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [1]}]}, "unsupported datatype COMPLEX"),
        ({"inputs": [{"datatype": "FP32"}]}, "has no name or shape"),
    ],
)
def test_bad_metadata_is_a_clear_error(metadata: Any, message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        shapes_from_metadata(metadata, AutoShapes(), "GET u")


# ---- TF Serving ------------------------------------------------------------------------------


def test_tfserving_batched_single_input_uses_plain_instances() -> None:
    request, document = body("tfserving", shape(batch=2))
    assert request.url == "http://127.0.0.1:9/v1/models/m:predict"
    assert document == {"instances": [[1.5, 2.5], [1.5, 2.5]]}


def test_tfserving_several_inputs_use_named_instances_and_unbatched_uses_columns() -> None:
    two = shape(
        batch=2,
        a={"datatype": "INT32", "dims": [1], "data": "literal", "value": 1},
        b={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "w"},
    )
    _request, document = body("tfserving", two)
    assert document == {"instances": [{"a": [1], "b": ["w"]}, {"a": [1], "b": ["w"]}]}
    request, columns = body("tfserving", shape(batch=0), model_version="2")
    assert request.url.endswith("/v1/models/m/versions/2:predict")
    assert columns == {"inputs": {"x": [1.5, 2.5]}}


def test_tfserving_parse_predictions_outputs_and_errors() -> None:
    adapter = make_adapter(server("tfserving"))
    assert adapter.parse(b'{"predictions": [[0.5, 1.0], [2.0, 3.0]]}')["predictions"].data == [
        0.5,
        1.0,
        2.0,
        3.0,
    ]
    named = adapter.parse(b'{"predictions": [{"a": 1, "b": [2]}, {"a": 3, "b": [4]}]}')
    assert named["a"].data == [1, 3]
    assert named["b"].data == [2, 4]
    assert adapter.parse(b'{"outputs": {"y": [1, 2]}}')["y"].data == [1, 2]
    with pytest.raises(InvalidResponse, match="carries an error: Serving signature"):
        adapter.parse(b'{"error": "Serving signature name: \\"x\\" not found"}')
    with pytest.raises(InvalidResponse, match="no predictions or outputs"):
        adapter.parse(b'{"predictions": []}')


# ---- TorchServe ------------------------------------------------------------------------------


def test_torchserve_sends_text_plain_for_one_string_and_json_otherwise() -> None:
    text = shape(batch=0, t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "hello there"})
    request, raw = body("torchserve", text)
    assert request.url == "http://127.0.0.1:9/predictions/m"
    assert request.headers["Content-Type"].startswith("text/plain")
    assert raw == b"hello there"
    request, document = body("torchserve", shape(batch=2), model_version="1.0")
    assert request.url.endswith("/predictions/m/1.0")
    assert document == {"x": [[1.5, 2.5], [1.5, 2.5]]}


def test_torchserve_parse_json_text_and_empty() -> None:
    adapter = make_adapter(server("torchserve"))
    assert adapter.parse(b'{"label": "cat", "score": 0.9}')["score"].data == [0.9]
    assert adapter.parse(b"positive")["body"].data == [b"positive"]
    with pytest.raises(InvalidResponse, match="no outputs"):
        adapter.parse(b"")
    with pytest.raises(InvalidResponse, match="no outputs"):
        adapter.parse(b"[]")


# ---- generic HTTP template ---------------------------------------------------------------------


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
