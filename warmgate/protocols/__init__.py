"""Model-server protocols the entrypoint and the probe speak: one module each (see base.py), found
by registry.py. Adding a protocol is one new module in this package plus its tests."""

from __future__ import annotations

from warmgate.protocols.answers import (
    InvalidResponse,
    Outputs,
    OutputTensor,
)
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
