"""The demo CNN as a torch module with the same weights as the ONNX graph, saved as TorchScript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from warmgate.modelserver import demo_architecture as demo
from warmgate.modelserver.runtime.torch_archive import SIGNATURE_FILE, signature_json, torchscript_allowed


class _Block(nn.Module):
    def __init__(self, block: demo.Block) -> None:
        super().__init__()
        self.conv1 = _conv(block.first)
        self.conv2 = _conv(block.second)
        self.shortcut: nn.Module = _conv(block.shortcut) if block.shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(branch + self.shortcut(x))


class DemoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(demo.STEM)
        self.blocks = nn.Sequential(*[_Block(b) for b in demo.BLOCKS])
        self.fc = nn.Linear(demo.FEATURES, demo.CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _conv(layer: demo.Conv) -> nn.Conv2d:
    return nn.Conv2d(layer.cin, layer.cout, layer.kernel, stride=layer.stride, padding=layer.kernel // 2)


def build_module(params: dict[str, np.ndarray]) -> DemoNet:
    net = DemoNet()
    state = {_torch_name(name): torch.from_numpy(value.copy()) for name, value in params.items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _torch_name(name: str) -> str:
    # layer1.conv1.weight -> blocks.0.conv1.weight; stem.* and fc.* keep their names.
    for index, block in enumerate(demo.BLOCKS):
        if name.startswith(block.name + "."):
            return f"blocks.{index}." + name[len(block.name) + 1 :]
    return name


def save_torchscript(path: Path, params: dict[str, np.ndarray]) -> None:
    extra = {SIGNATURE_FILE: signature_json([demo.INPUT], [demo.OUTPUT])}
    with torchscript_allowed():
        torch.jit.save(torch.jit.script(build_module(params)), str(path), _extra_files=extra)


def save_export(path: Path, params: dict[str, np.ndarray]) -> None:
    """The same network as a torch.export program with a dynamic batch dimension (for torch.compile)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.zeros(2, *demo.INPUT.shape[1:]),)
    program = torch.export.export(build_module(params), example, dynamic_shapes={"x": {0: batch}})
    extra = {SIGNATURE_FILE: signature_json([demo.INPUT], [demo.OUTPUT])}
    torch.export.save(program, str(path), extra_files=extra)
