"""The embedded demo model: a small ResNet-style CNN generated deterministically, no downloads.

Weights come from a fixed-seed numpy generator; the same weights are written as an ONNX graph
(built directly with onnx.helper, so the ONNX runtime needs no torch) and, when asked, as TorchScript.
Input "input" FP32 [batch, 3, 64, 64], output "logits" FP32 [batch, 10]. About 2.8 M parameters and
1.1 GFLOP per image: a batch of 8 takes tens of milliseconds on two CPU cores, and the first call of
each batch size is visibly slower than the next.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from warmgate.modelserver.cache import write_atomically
from warmgate.modelserver.demo_architecture import (
    BLOCKS,
    CLASSES,
    INPUT,
    MODEL_NAME,
    OPSET,
    OUTPUT,
    SEED,
    STEM,
    Block,
    Conv,
    fingerprint,
    weights,
)

# Re-exported: callers build and describe the demo through this one module.
__all__ = [
    "BLOCKS",
    "INPUT",
    "MODEL_NAME",
    "OUTPUT",
    "SEED",
    "STEM",
    "Block",
    "Conv",
    "build_onnx",
    "ensure_export",
    "ensure_onnx",
    "ensure_torchscript",
    "fingerprint",
    "model_dir",
    "weights",
]


def model_dir(cache_dir: Path) -> Path:
    return cache_dir / "demo" / fingerprint()


def ensure_onnx(cache_dir: Path) -> Path:
    path = model_dir(cache_dir) / "demo.onnx"
    if not path.exists():
        write_atomically(path, lambda tmp: _save_onnx(tmp, weights()))
    return path


def ensure_torchscript(cache_dir: Path) -> Path:
    path = model_dir(cache_dir) / "demo.pt"
    if not path.exists():
        # Imported here: only the torch runtime needs torch.
        from warmgate.modelserver.runtime.torch_demo import save_torchscript

        write_atomically(path, lambda tmp: save_torchscript(tmp, weights()))
    return path


def ensure_export(cache_dir: Path) -> Path:
    path = model_dir(cache_dir) / "demo.pt2"
    if not path.exists():
        from warmgate.modelserver.runtime.torch_demo import save_export

        write_atomically(path, lambda tmp: save_export(tmp, weights()))
    return path


def build_onnx(params: dict[str, np.ndarray]) -> object:
    """The ONNX ModelProto: Conv/Relu/Add blocks, global average pool, a Gemm head."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = []

    def conv(source: str, layer: Conv, relu: bool) -> str:
        pad = layer.kernel // 2
        out = f"{layer.name}.out"
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{layer.name}.weight", f"{layer.name}.bias"],
                [out],
                kernel_shape=[layer.kernel] * 2,
                strides=[layer.stride] * 2,
                pads=[pad] * 4,
            )
        )
        if not relu:
            return out
        nodes.append(helper.make_node("Relu", [out], [f"{out}.relu"]))
        return f"{out}.relu"

    x = conv(INPUT.name, STEM, relu=True)
    for block in BLOCKS:
        branch = conv(conv(x, block.first, relu=True), block.second, relu=False)
        skip = conv(x, block.shortcut, relu=False) if block.shortcut else x
        nodes.append(helper.make_node("Add", [branch, skip], [f"{block.name}.sum"]))
        nodes.append(helper.make_node("Relu", [f"{block.name}.sum"], [f"{block.name}.out"]))
        x = f"{block.name}.out"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["features"], axis=1))
    nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], [OUTPUT.name], transB=1))
    graph = helper.make_graph(
        nodes,
        "warmgate-demo-resnet",
        [helper.make_tensor_value_info(INPUT.name, TensorProto.FLOAT, ["batch", *INPUT.shape[1:]])],
        [helper.make_tensor_value_info(OUTPUT.name, TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[numpy_helper.from_array(value, name) for name, value in params.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="warmgate")
    # ONNX Runtime rejects IR versions newer than it knows; 8 is what opset 17 shipped with.
    model.ir_version = 8
    return model


def _save_onnx(path: Path, params: dict[str, np.ndarray]) -> None:
    import onnx

    model = build_onnx(params)
    onnx.checker.check_model(model)  # type: ignore[arg-type]
    onnx.save(model, str(path))  # type: ignore[arg-type]
