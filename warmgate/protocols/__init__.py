"""Model-server protocols the entrypoint and the probe speak: one module each (see base.py), found
by registry.py. Adding a protocol is one new module in this package plus its tests."""

from __future__ import annotations

from warmgate.protocols.base import (
    Adapter,
    EncodeError,
    InvalidResponse,
    MetadataError,
    Outputs,
    OutputTensor,
    PreparedRequest,
    Result,
    send,
    validate,
)
from warmgate.protocols.registry import adapters, make_adapter

# The engine's older name for EncodeError (which the http template's TemplateError is one of):
# catching it catches every protocol's "cannot encode this shape".
TemplateError = EncodeError

__all__ = [
    "Adapter",
    "EncodeError",
    "InvalidResponse",
    "MetadataError",
    "OutputTensor",
    "Outputs",
    "PreparedRequest",
    "Result",
    "TemplateError",
    "adapters",
    "make_adapter",
    "send",
    "validate",
]
