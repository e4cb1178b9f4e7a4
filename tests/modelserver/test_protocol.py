from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warmgate.modelserver.protocol import ProtocolError, decode_request, encode_response, split_body
from warmgate.modelserver.runtime.base import ModelInfo, TensorSpec

INFO = ModelInfo(
    name="m", version="1", platform="test",
    inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("n", "INT8", (-1, 2))),
    outputs=(TensorSpec("y", "FP32", (-1, 2)), TensorSpec("s", "BYTES", (-1,))),
    device="cpu", providers=("test",), batched=True,
)  # fmt: skip


def tensor(name: str, shape: list[int], datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def body(a: Any = None, n: Any = None, **extra: Any) -> dict[str, Any]:
    a = tensor("a", [1, 2], "FP32", [1.5, 2]) if a is None else a
    n = tensor("n", [1, 2], "INT8", [3, -4]) if n is None else n
    return {"inputs": [a, n], **extra}


def test_flat_and_nested_data_decode_alike() -> None:
    flat = decode_request(body(), INFO, 8)
    nested = decode_request(
        body(tensor("a", [1, 2], "FP32", [[1.5, 2]]), tensor("n", [1, 2], "INT8", [[3, -4]])), INFO, 8
    )
    for decoded in (flat, nested):
        assert decoded.batch_size == 1
        assert decoded.inputs["a"].dtype == np.float32 and decoded.inputs["n"].dtype == np.int8
        np.testing.assert_array_equal(decoded.inputs["a"], [[1.5, 2.0]])
        np.testing.assert_array_equal(decoded.inputs["n"], [[3, -4]])


@pytest.mark.parametrize(
    ("request_body", "status", "fragment"),
    [
        ([], 400, "JSON object"),
        ({"inputs": []}, 400, "non-empty"),
        (body(tensor("b", [1, 2], "FP32", [1, 2])), 400, "unknown input 'b'"),
        ({"inputs": [tensor("a", [1, 2], "FP32", [1, 2])]}, 400, "missing input(s) 'n'"),
        (body(tensor("a", [1, 2], "FP64", [1, 2])), 400, "does not match the model's FP32"),
        (body(tensor("a", [1, 2], "BF16", [1, 2])), 400, "unsupported datatype"),
        (body(tensor("a", [1, 3], "FP32", [1, 2, 3])), 400, "at axis 1"),
        (body(tensor("a", [2], "FP32", [1, 2])), 400, "rank 1"),
        (body(tensor("a", [1, 2], "FP32", [1, 2, 3])), 400, "needs 2 elements, data has 3"),
        (body(tensor("a", [1, 2], "FP32", ["1", "2"])), 400, "must be numbers"),
        (body(tensor("a", [1, 2], "FP32", [[1], [2, 3]])), 400, "ragged"),
        (body(n=tensor("n", [1, 2], "INT8", [1.5, 2])), 400, "must be integers"),
        (body(n=tensor("n", [1, 2], "INT8", [300, 2])), 400, "out of range for INT8"),
        (body(tensor("a", [1, -2], "FP32", [1, 2])), 400, "negative"),
        (body(tensor("a", "1,2", "FP32", [1, 2])), 400, "list of integers"),
        (body(n=tensor("n", [2, 2], "INT8", [1, 2, 3, 4])), 400, "disagree on the batch size"),
        (body(tensor("a", [9, 2], "FP32", [0] * 18), tensor("n", [9, 2], "INT8", [0] * 18)), 400, "exceeds"),
        (body(outputs=[{"name": "nope"}]), 400, "unknown output(s) 'nope'"),
        (body(id=7), 400, "id must be a string"),
        ({"inputs": [body()["inputs"][0], body()["inputs"][0], body()["inputs"][1]]}, 400, "given twice"),
        (
            {"inputs": [{k: v for k, v in tensor("a", [1, 2], "FP32", 0).items() if k != "data"}]},
            400,
            "no data",
        ),
    ],
)
def test_client_mistakes_are_4xx_with_a_message(request_body: Any, status: int, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_request(request_body, INFO, 8)
    assert caught.value.status == status
    assert fragment in str(caught.value)


def test_bool_and_bytes_inputs_are_strict() -> None:
    info = ModelInfo(
        "m", "1", "t", (TensorSpec("b", "BOOL", (2,)), TensorSpec("s", "BYTES", (2,))), (), "cpu", (), False
    )
    ok = decode_request(
        {"inputs": [tensor("b", [2], "BOOL", [True, False]), tensor("s", [2], "BYTES", ["é", ""])]}, info, 1
    )
    assert ok.inputs["b"].dtype == np.bool_
    assert list(ok.inputs["s"]) == ["é".encode(), b""]
    with pytest.raises(ProtocolError, match="true/false"):
        decode_request(
            {"inputs": [tensor("b", [2], "BOOL", [1, 0]), tensor("s", [2], "BYTES", ["", ""])]}, info, 1
        )
    with pytest.raises(ProtocolError, match="must be strings"):
        decode_request(
            {"inputs": [tensor("b", [2], "BOOL", [True, True]), tensor("s", [2], "BYTES", [1, 2])]}, info, 1
        )


def test_response_carries_id_requested_outputs_and_decoded_bytes() -> None:
    decoded = decode_request(body(id="req-1", outputs=[{"name": "s"}]), INFO, 8)
    results = {"y": np.zeros((1, 2), np.float32), "s": np.array([b"caf\xc3\xa9"], dtype=object)}
    response = encode_response(INFO, decoded, results).body
    assert response == {
        "model_name": "m",
        "model_version": "1",
        "id": "req-1",
        "outputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["café"]}],
    }


@given(
    batch=st.integers(1, 4),
    values=st.lists(st.floats(-1e3, 1e3, width=16), min_size=8, max_size=8),
)
def test_fp16_round_trips_exactly(batch: int, values: list[float]) -> None:
    info = ModelInfo(
        "m",
        "1",
        "t",
        (TensorSpec("h", "FP16", (-1, 2)),),
        (TensorSpec("h", "FP16", (-1, 2)),),
        "cpu",
        (),
        True,
    )
    data = values[: batch * 2]
    decoded = decode_request({"inputs": [tensor("h", [batch, 2], "FP16", data)]}, info, 8)
    assert decoded.inputs["h"].dtype == np.float16
    out = encode_response(info, decoded, {"h": decoded.inputs["h"]}).body["outputs"][0]
    assert out["datatype"] == "FP16" and out["shape"] == [batch, 2]
    assert out["data"] == [float(np.float16(v)) for v in data]


def test_binary_inputs_and_outputs_share_the_json_checks() -> None:
    a = np.array([[1.5, 2.0]], dtype=np.float32)
    header = {
        "id": "b",
        "inputs": [
            {"name": "a", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            tensor("n", [1, 2], "INT8", [3, -4]),
        ],
        "outputs": [{"name": "s", "parameters": {"binary_data": True}}, {"name": "y"}],
    }
    head, binary = split_body(b"{}" + a.tobytes(), "2")
    assert head == b"{}"
    decoded = decode_request(header, INFO, 8, binary)
    np.testing.assert_array_equal(decoded.inputs["a"], a)
    assert decoded.outputs == ("s", "y") and decoded.binary_outputs == frozenset({"s"})
    results = {"y": np.zeros((1, 2), np.float32), "s": np.array([b"caf\xc3\xa9"], dtype=object)}
    response = encode_response(INFO, decoded, results)
    assert response.body["outputs"] == [
        {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}},
        {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 0.0]},
    ]
    assert response.binary == (b"\x05\x00\x00\x00caf\xc3\xa9",)
    # The shared checks apply to binary inputs as to JSON ones.
    header["inputs"][0]["shape"] = [1, 3]
    with pytest.raises(
        ProtocolError, match=r"input 'a': shape \[1, 3\] differs from the model's \[-1, 2\] at axis 1"
    ):
        decode_request(header, INFO, 8, split_body(b"{}" + a.tobytes(), "2")[1])
