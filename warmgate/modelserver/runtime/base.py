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

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # the CLI imports this module through the registry: no numpy in `warmgate --help`
    import numpy as np

OptionsT = TypeVar("OptionsT")


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
class TextOptions:
    """Serve a token-id model behind one BYTES input tokenised in the server."""

    tokenizer_path: Path
    input_name: str = "text"
    max_length: int = 128


@dataclass(frozen=True)
class RuntimeSpec:
    # The registered name of the runtime (see registry.py).
    kind: str
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
    # The runtime's own options (an instance of the dataclass its module declares); None: its defaults.
    options: object = None
    text: TextOptions | None = None

    def options_as(self, kind: type[OptionsT]) -> OptionsT:
        """This spec's runtime options as the runtime's own type; its defaults when none were given."""
        if self.options is None:
            return kind()
        if not isinstance(self.options, kind):
            raise TypeError(f"runtime {self.kind}: options must be {kind.__name__}, got {self.options!r}")
        return self.options


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a runtime without command-line options of its own."""


def no_options(args: argparse.Namespace, cache_dir: Path) -> object:
    return None


@dataclass(frozen=True)
class RuntimeType:
    """What a runtime module declares as `RUNTIME`: the registry reads these, never a list elsewhere.

    Declaring it must stay cheap: the module imports its framework (onnxruntime, torch) and numpy
    inside the functions that use them, because the CLI reads every declaration to build its parser.
    """

    # The --runtime value and `RuntimeSpec.kind`.
    name: str
    # One line for --help, e.g. "ONNX Runtime".
    title: str
    # Model file suffixes that select this runtime when --runtime is not given.
    suffixes: tuple[str, ...]
    # What a user installs when the framework is missing, e.g. "onnxruntime (pip install 'warmgate[server]')".
    needs: str
    # Before fork, in the supervisor; see the module docstring. Returns a runtime workers may share.
    prepare: Callable[[RuntimeSpec], Runtime | None]
    # In a worker: the ready runtime.
    load: Callable[[RuntimeSpec], Runtime]
    # Adds the runtime's own flags (an argument group) to `warmgate serve`.
    add_arguments: Callable[[argparse.ArgumentParser], None] = no_arguments
    # Turns those flags into the runtime's options object (`RuntimeSpec.options`); raises ValueError
    # with a one-line message naming the flag. The cache directory is where generated files may go.
    options_from_args: Callable[[argparse.Namespace, Path], object] = no_options
    # `--demo`: writes (once) the demo model in this runtime's format and returns its path;
    # None when the runtime has no demo.
    demo_model: Callable[[Path, object], Path] | None = None


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

    def warmed(self) -> None:  # noqa: B027 - optional hook
        """After warmup, before ready: persist what warmup produced (compile caches). Must not raise."""

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
