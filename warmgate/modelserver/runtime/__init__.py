"""Runtime selection through the registry. Frameworks (onnxruntime, torch) are imported only when loaded."""

from __future__ import annotations

from warmgate.modelserver.runtime.base import (
    InferenceError,
    ModelInfo,
    ModelLoadError,
    Runtime,
    RuntimeSpec,
    RuntimeType,
    TensorSpec,
)
from warmgate.modelserver.runtime.registry import runtime_type
from warmgate.modelserver.trace import startup_step

__all__ = [
    "InferenceError",
    "ModelInfo",
    "ModelLoadError",
    "Runtime",
    "RuntimeSpec",
    "RuntimeType",
    "TensorSpec",
    "load",
    "prepare",
]


def _declared(spec: RuntimeSpec) -> RuntimeType:
    try:
        return runtime_type(spec.kind)
    except KeyError as exc:
        raise ModelLoadError(str(exc.args[0])) from None


def _missing(declared: RuntimeType, exc: ImportError) -> ModelLoadError:
    return ModelLoadError(f"runtime {declared.name} needs {declared.needs}: {exc}")


def prepare(spec: RuntimeSpec) -> Runtime | None:
    """In the supervisor, before fork: see base.py. Returns a runtime workers may use, or None."""
    declared = _declared(spec)
    try:
        return declared.prepare(spec)
    except ImportError as exc:
        raise _missing(declared, exc) from None


def load(spec: RuntimeSpec, prepared: Runtime | None = None) -> Runtime:
    """In a worker: the ready runtime, reusing one loaded before fork."""
    declared = _declared(spec)
    try:
        runtime = prepared if prepared is not None else declared.load(spec)
    except ImportError as exc:
        raise _missing(declared, exc) from None
    if spec.text is not None:
        from warmgate.modelserver.runtime.text import TextRuntime

        with startup_step("tokenizer load", str(spec.text.tokenizer_path.name)):
            runtime = TextRuntime(runtime, spec.text)
    return runtime
