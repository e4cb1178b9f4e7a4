"""Runtime selection. Runtime modules (onnxruntime, torch) are imported only when chosen."""

from __future__ import annotations

import importlib
from types import ModuleType

from warmgate.modelserver.runtime.base import (
    RUNTIME_KINDS,
    InferenceError,
    ModelInfo,
    ModelLoadError,
    Runtime,
    RuntimeSpec,
    TensorSpec,
)

__all__ = [
    "RUNTIME_KINDS",
    "InferenceError",
    "ModelInfo",
    "ModelLoadError",
    "Runtime",
    "RuntimeSpec",
    "TensorSpec",
    "load",
    "prepare",
]

_MODULES = {
    "onnx": "warmgate.modelserver.runtime.onnx_runtime",
    "torch": "warmgate.modelserver.runtime.torch_runtime",
}
_PACKAGES = {
    "onnx": "onnxruntime (pip install 'warmgate[server]')",
    "torch": "torch (pip install 'warmgate[torch]')",
}


def _module(spec: RuntimeSpec) -> ModuleType:
    try:
        return importlib.import_module(_MODULES[spec.kind])
    except ImportError as exc:
        raise ModelLoadError(f"runtime {spec.kind} needs {_PACKAGES[spec.kind]}: {exc}") from None


def prepare(spec: RuntimeSpec) -> Runtime | None:
    """In the supervisor, before fork: see base.py. Returns a runtime workers may use, or None."""
    prepared: Runtime | None = _module(spec).prepare(spec)
    return prepared


def load(spec: RuntimeSpec, prepared: Runtime | None = None) -> Runtime:
    """In a worker: the ready runtime, reusing one loaded before fork."""
    runtime: Runtime = prepared if prepared is not None else _module(spec).load(spec)
    if spec.text is not None:
        from warmgate.modelserver.runtime.text import TextRuntime

        runtime = TextRuntime(runtime, spec.text)
    return runtime
