"""Small models the tests build themselves: ONNX graphs with onnx.helper, a tokenizer with tokenizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(path: Path, nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def identity(path: Path, elem_type: int, dims: list) -> Path:
    """x -> y unchanged: FP16, BYTES (string), BOOL... round trips through the protocol."""
    return _save(
        path,
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", elem_type, dims)],
        [helper.make_tensor_value_info("y", elem_type, dims)],
    )


def mixed(path: Path) -> Path:
    """Two inputs, two outputs, batch dim dynamic:
    a FP32 [b,4], n INT64 [b,4] -> total FP32 [b,4] = a * 2 + n ; flag BOOL [b] = sum(a) > 0."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["a2"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a2", "nf"], ["total"]),
        helper.make_node("ReduceSum", ["a", "axes"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["flag"]),
    ]
    return _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch"]),
        ],
        [two, axes, zero],
    )


def slow(path: Path, size: int = 128) -> Path:
    """Runs `steps` matrix products: a model whose latency the caller controls (drain tests).
    steps INT64 [1], x FP32 [size, size] -> y FP32 [size, size]."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "v_in"], ["product"]),
            helper.make_node("Tanh", ["product"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    true = numpy_helper.from_array(np.array(True), "true")
    nodes = [
        helper.make_node("Squeeze", ["steps"], ["trip"]),
        helper.make_node("Loop", ["trip", "true", "x"], ["y"], body=body),
    ]
    return _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("steps", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [true],
    )


def token_counter(path: Path) -> Path:
    """A stand-in text encoder: input_ids, attention_mask INT64 [b, t] -> tokens INT64 [b] (tokens per
    text, from the mask) and id_sum INT64 [b] (sum of the ids)."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "axes"], ["tokens"], keepdims=0),
        helper.make_node("ReduceSum", ["input_ids", "axes"], ["id_sum"], keepdims=0),
    ]
    return _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("id_sum", TensorProto.INT64, ["batch"]),
        ],
        [axes],
    )


WORDS = ["hello", "warm", "world", "servers", "answer", "fast"]


def word_tokenizer(path: Path) -> Path:
    """A real tokenizers WordLevel tokenizer: [PAD]=0, [UNK]=1, then WORDS from id 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


# Every OIP datatype but BF16 (no numpy dtype), with the ONNX element type that holds it.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identities(path: Path, datatypes: list[str]) -> Path:
    """One Identity per datatype: x_<type> [batch, 2] -> y_<type> [batch, 2] (names lower-case)."""
    nodes, inputs, outputs = [], [], []
    for datatype in datatypes:
        name = datatype.lower()
        nodes.append(helper.make_node("Identity", [f"x_{name}"], [f"y_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"x_{name}", ONNX_TYPES[datatype], ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", ONNX_TYPES[datatype], ["batch", 2]))
    return _save(path, nodes, inputs, outputs)


def sample(datatype: str) -> np.ndarray:
    """[2, 2] of the datatype, with its extreme values where it has them."""
    if datatype == "BYTES":
        return np.array([[b"h\xc3\xa9llo", b""], [b"a b", b"z" * 40]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    dtype = np.dtype(datatype.replace("FP", "float").lower())
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return np.array([[limits.min, limits.max], [0, 1]], dtype=dtype)
    return np.array([[np.finfo(dtype).max, -1.5], [np.finfo(dtype).tiny, 0.0]], dtype=dtype)
