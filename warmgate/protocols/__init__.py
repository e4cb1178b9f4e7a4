"""Model-server protocols the entrypoint and the probe speak: one module each (see base.py), found
by registry.py. Adding a protocol is one new module in this package plus its tests.

The names below are loaded on first use, not when the package is imported: the probe's serving
process imports the light modules here (answers, readiness, _http1) and must not load what the
adapters need (aiohttp, the pydantic config).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warmgate.protocols.answers import InvalidResponse, Outputs, OutputTensor
    from warmgate.protocols.base import (
        Adapter,
        EncodeError,
        MetadataError,
        PreparedRequest,
        Result,
        send,
        validate,
    )
    from warmgate.protocols.registry import adapters, make_adapter

_HOMES = {
    "InvalidResponse": "answers",
    "Outputs": "answers",
    "OutputTensor": "answers",
    "Adapter": "base",
    "EncodeError": "base",
    "MetadataError": "base",
    "PreparedRequest": "base",
    "Result": "base",
    "send": "base",
    "validate": "base",
    "adapters": "registry",
    "make_adapter": "registry",
}

__all__ = [
    "Adapter",
    "EncodeError",
    "InvalidResponse",
    "MetadataError",
    "OutputTensor",
    "Outputs",
    "PreparedRequest",
    "Result",
    "adapters",
    "make_adapter",
    "send",
    "validate",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
