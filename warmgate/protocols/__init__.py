"""Model-server protocols the entrypoint speaks, behind one small interface (see base.py)."""

from __future__ import annotations

from warmgate.config import ServerConfig
from warmgate.protocols.base import (
    Adapter,
    InvalidResponse,
    MetadataError,
    Outputs,
    OutputTensor,
    PreparedRequest,
    Result,
    send,
    validate,
)
from warmgate.protocols.httptemplate import HttpTemplateAdapter, TemplateError
from warmgate.protocols.oip import OipAdapter
from warmgate.protocols.tfserving import TfServingAdapter
from warmgate.protocols.torchserve import TorchServeAdapter

__all__ = [
    "Adapter",
    "InvalidResponse",
    "MetadataError",
    "OutputTensor",
    "Outputs",
    "PreparedRequest",
    "Result",
    "TemplateError",
    "make_adapter",
    "send",
    "validate",
]


def make_adapter(server: ServerConfig) -> Adapter:
    adapters: dict[str, type[Adapter]] = {
        "oip": OipAdapter,
        "tfserving": TfServingAdapter,
        "torchserve": TorchServeAdapter,
        "http": HttpTemplateAdapter,
    }
    return adapters[server.protocol](server)
