"""The runtimes the server knows: every module `warmgate/modelserver/runtime/<name>_runtime.py`
that declares `RUNTIME = RuntimeType(...)`.

The CLI (`--runtime` choices, each runtime's flags, help), suffix detection and loading all read
this registry; nothing else lists runtimes. Runtime modules import their framework only inside the
functions that use it, so discovering them costs a few small imports: the CLI builds its parser in
PID 1 of `warmgate run`, which must never import torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from warmgate.modelserver.runtime.base import RuntimeType

# The naming convention that makes a module a runtime.
MODULE_SUFFIX = "_runtime"


def runtime_types() -> dict[str, RuntimeType]:
    """Every declared runtime by name, in module-name order (stable help text and choices)."""
    package = __name__.rpartition(".")[0]
    found: dict[str, RuntimeType] = {}
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not module.name.endswith(MODULE_SUFFIX):
            continue
        declared = getattr(importlib.import_module(f"{package}.{module.name}"), "RUNTIME", None)
        if not isinstance(declared, RuntimeType):
            raise TypeError(f"{package}.{module.name} declares no RUNTIME = RuntimeType(...)")
        if declared.name in found:
            raise TypeError(f"runtime name {declared.name!r} declared twice")
        found[declared.name] = declared
    return found


def runtime_type(name: str) -> RuntimeType:
    """The runtime called `name`; KeyError names the known ones."""
    types = runtime_types()
    if name not in types:
        raise KeyError(f"unknown runtime {name!r}; known: {', '.join(types)}")
    return types[name]


def runtime_for_suffix(suffix: str) -> str | None:
    """The runtime that serves files with this suffix (e.g. ".onnx"), or None."""
    for runtime in runtime_types().values():
        if suffix in runtime.suffixes:
            return runtime.name
    return None
