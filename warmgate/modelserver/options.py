"""The server's typed options, decided once in main and passed down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this module for its defaults: keep numpy out of `warmgate --help`
    from warmgate.modelserver.runtime.base import RuntimeSpec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The gRPC port the image and the chart use (Triton's); `warmgate serve` itself serves gRPC only
# when asked (--grpc-port or $WARMGATE_GRPC_PORT), so servers started side by side never collide on it.
IMAGE_GRPC_PORT = 8001
GRPC_PORT_ENV = "WARMGATE_GRPC_PORT"
DEFAULT_MAX_BATCH_SIZE = 64
# Large enough for a batch of 64 FP32 images of 3x224x224 as JSON text.
DEFAULT_MAX_REQUEST_BYTES = 256 * 1024 * 1024
DEFAULT_GRACEFUL_TIMEOUT_S = 30.0
DEFAULT_WARMUP_COUNT = 3
# The runtime `--demo` uses without --runtime: the ONNX demo needs no torch.
DEMO_RUNTIME = "onnx"


@dataclass(frozen=True)
class ServeOptions:
    spec: RuntimeSpec
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # The OIP gRPC service's port; None: no gRPC; 0: a free one.
    grpc_port: int | None = None
    workers: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S
    # In-process warmup before the worker reports ready; empty: none (the entrypoint warms from outside).
    warmup_batch_sizes: tuple[int, ...] = ()
    warmup_count: int = DEFAULT_WARMUP_COUNT
