"""The demo CNN's architecture and weights: a leaf that both the ONNX builder (demo.py) and the
torch builder (runtime/torch_demo.py) read, so neither imports the other.

A small ResNet-style CNN from a fixed-seed numpy generator: input "input" FP32 [batch, 3, 64, 64],
output "logits" FP32 [batch, 10].
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from warmgate.modelserver.runtime.base import TensorSpec

SEED = 20240611
OPSET = 17
INPUT = TensorSpec("input", "FP32", (-1, 3, 64, 64))
OUTPUT = TensorSpec("logits", "FP32", (-1, 10))
MODEL_NAME = "demo"


@dataclass(frozen=True)
class Conv:
    name: str
    cin: int
    cout: int
    kernel: int
    stride: int
    # Scales the He-initialised weights: the last conv of a residual branch starts small, as in
    # ResNet's zero-gamma trick, so activations stay in range through the blocks without BatchNorm.
    gain: float = 1.0


@dataclass(frozen=True)
class Block:
    name: str
    first: Conv
    second: Conv
    shortcut: Conv | None


def _block(name: str, cin: int, cout: int, stride: int) -> Block:
    projection = cin != cout or stride != 1
    return Block(
        name,
        Conv(f"{name}.conv1", cin, cout, 3, stride),
        Conv(f"{name}.conv2", cout, cout, 3, 1, gain=0.3),
        Conv(f"{name}.shortcut", cin, cout, 1, stride) if projection else None,
    )


STEM = Conv("stem", 3, 48, 3, 1)
BLOCKS = (
    _block("layer1", 48, 48, 1),
    _block("layer2", 48, 96, 2),
    _block("layer3", 96, 192, 2),
    _block("layer4", 192, 384, 2),
)
CLASSES = OUTPUT.shape[1]
FEATURES = BLOCKS[-1].second.cout


def convs() -> list[Conv]:
    layers = [STEM]
    for block in BLOCKS:
        layers += [block.first, block.second] + ([block.shortcut] if block.shortcut else [])
    return layers


def weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """All parameters, float32, in a fixed order so the same seed always gives the same model."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for conv in convs():
        fan_in = conv.cin * conv.kernel * conv.kernel
        shape = (conv.cout, conv.cin, conv.kernel, conv.kernel)
        params[f"{conv.name}.weight"] = (rng.standard_normal(shape) * np.sqrt(2 / fan_in) * conv.gain).astype(
            np.float32
        )
        params[f"{conv.name}.bias"] = (rng.standard_normal(conv.cout) * 0.01).astype(np.float32)
    params["fc.weight"] = (rng.standard_normal((CLASSES, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    params["fc.bias"] = np.zeros(CLASSES, dtype=np.float32)
    return params


def fingerprint() -> str:
    """Changes whenever the architecture, seed or export format changes: the cache key."""
    description = json.dumps([repr(BLOCKS), repr(STEM), SEED, OPSET, INPUT.as_json(), OUTPUT.as_json(), 1])
    return hashlib.sha256(description.encode()).hexdigest()[:12]
