"""Model-server protocols the entrypoint speaks, behind one small interface (see base.py)."""

from __future__ import annotations

from entrypoint.config import ServerConfig
from entrypoint.protocols.base import (
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
from entrypoint.protocols.httptemplate import HttpTemplateAdapter, TemplateError
from entrypoint.protocols.oip import OipAdapter
from entrypoint.protocols.tfserving import TfServingAdapter
from entrypoint.protocols.torchserve import TorchServeAdapter

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
