"""The one runtime interface: load a model, describe it, run a batch.

A runtime is built from a `RuntimeSpec` (plain, picklable data decided in `main`) in two steps so that
multi-worker servers can share work done before fork:

- `prepare(spec)` runs in the supervising process before workers are forked. It may do work whose
  result survives fork safely (build an optimised-model cache, map weights into memory) and returns a
  loaded runtime only when the runtime can be used after fork (CPU TorchScript). It never starts
  thread pools that a child would inherit half-dead and never touches CUDA.
- `load(spec)` runs in each worker (after fork) and returns a ready runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

RuntimeKind = Literal["onnx", "torch"]
RUNTIME_KINDS: tuple[RuntimeKind, ...] = ("onnx", "torch")
TorchDtype = Literal["float32", "float16", "bfloat16"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
CudnnConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]


class ModelLoadError(Exception):
    """The model cannot be loaded or does not fit the request made of it; one line, says which file."""


class InferenceError(Exception):
    """The runtime rejected or failed a batch that passed the protocol's checks."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. Dims of -1 are dynamic (the batch dimension is dims[0])."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and where it really runs."""

    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # The device and, for ONNX Runtime, the execution providers actually in use, not the requested ones.
    device: str
    providers: tuple[str, ...]
    # True when dims[0] of every input and output is a dynamic batch dimension.
    batched: bool


@dataclass(frozen=True)
class OnnxOptions:
    # Execution providers by short name (tensorrt, cuda, cpu); empty means derived from the device.
    providers: tuple[str, ...] = ()
    graph_optimization: GraphOptimization = "all"
    # Where optimised models are cached; None disables the cache.
    optimized_cache_dir: Path | None = None
    # ORT's default EXHAUSTIVE benchmarks every conv algorithm on the first call of each shape: the
    # best steady state, the slowest first call. Warmup pays it; HEURISTIC avoids most of it.
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"


@dataclass(frozen=True)
class TorchOptions:
    dtype: TorchDtype = "float32"
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"


@dataclass(frozen=True)
class TextOptions:
    """Serve a token-id model behind one BYTES input tokenised in the server."""

    tokenizer_path: Path
    input_name: str = "text"
    max_length: int = 128


@dataclass(frozen=True)
class RuntimeSpec:
    kind: RuntimeKind
    model_path: Path
    model_name: str
    model_version: str = "1"
    # auto | cpu | cuda | cuda:N
    device: str = "auto"
    # Intra-op threads of one worker's session.
    threads: int = 1
    # Concurrent batches one worker runs; None lets the runtime decide from its device and threads.
    concurrency: int | None = None
    require_gpu: bool = False
    # Signature for models that carry none (TorchScript without the warmgate extra file).
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    onnx: OnnxOptions = field(default_factory=OnnxOptions)
    torch: TorchOptions = field(default_factory=TorchOptions)
    text: TextOptions | None = None


class Runtime(ABC):
    """A loaded model. `infer` is thread-safe: the server calls it from an executor of `concurrency`."""

    @abstractmethod
    def info(self) -> ModelInfo: ...

    @abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs are validated against `info().inputs`; outputs keyed by name."""

    @property
    def concurrency(self) -> int:
        return 1

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the session and its memory."""


def first_line(exc: BaseException) -> str:
    """A runtime's exception as one line for an error message (runtimes raise multi-line text)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def is_cuda_device(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index else 0


def validate_device(device: str) -> str:
    """auto | cpu | cuda | cuda:N, or ValueError."""
    if device in ("auto", "cpu", "cuda"):
        return device
    prefix, _, index = device.partition(":")
    if prefix == "cuda" and index.isdigit():
        return device
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
