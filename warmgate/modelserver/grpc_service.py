"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`) in a worker, on
the worker's event loop beside the HTTP app, over the same data plane (dataplane.py).

Every RPC names its worker in trailing metadata (`x-warmgate-worker`, as the HTTP header) and
answers a refusal with the status code matching the HTTP status and the same one-line message as
details: 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 503 -> UNAVAILABLE, 500 -> INTERNAL. A request
over --max-request-mb is refused by gRPC itself, before it is read into memory: RESOURCE_EXHAUSTED
with gRPC's own details ("Received message larger than max (N vs. M)"), and it never reaches the
request counters. Inference requests count in the same metrics as HTTP's, `code` being the HTTP
status of the same answer (see docs/modelserver.md).

This module imports grpc: the worker loads it only when --grpc-port is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from warmgate import __version__
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.grpcapi import open_inference_grpc_pb2_grpc as pb_grpc
from warmgate.modelserver.dataplane import (
    EXTENSIONS,
    SERVER_NAME,
    WORKER_HEADER,
    ServerContext,
    check_model,
    counted,
    loaded_runtime,
    not_ready_reason,
    ready_runtime,
    run_inference,
    server_not_ready_reason,
)
from warmgate.modelserver.grpc_codec import (
    decode_infer_request,
    encode_infer_response,
    model_metadata_response,
)
from warmgate.modelserver.grpc_health import HealthServicer
from warmgate.modelserver.sockets import GrpcListen, ListenError, bind_socket, format_url
from warmgate.modelserver.validation import ProtocolError

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# gRPC message sizes are C ints.
_MAX_MESSAGE_BYTES = 2**31 - 1

Rpc = grpc.aio.ServicerContext[Any, Any]


class _Answering:
    """Around each RPC: tag it with the worker, turn a ProtocolError into its status and message."""

    def __init__(self, rpc: Rpc, worker: str) -> None:
        self._rpc = rpc
        self._worker = worker

    async def __aenter__(self) -> None:
        self._rpc.set_trailing_metadata(((WORKER_HEADER, self._worker),))

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, ProtocolError):
            # abort() ends the RPC by raising; the trailing metadata set above still goes out.
            await self._rpc.abort(_STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, context: ServerContext) -> None:
        self._context = context

    def _answering(self, rpc: Rpc) -> _Answering:
        return _Answering(rpc, self._context.worker)

    async def ServerLive(self, request: pb.ServerLiveRequest, rpc: Rpc) -> pb.ServerLiveResponse:
        async with self._answering(rpc):
            return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, rpc: Rpc) -> pb.ServerReadyResponse:
        async with self._answering(rpc):
            return pb.ServerReadyResponse(ready=server_not_ready_reason(self._context) is None)

    async def ModelReady(self, request: pb.ModelReadyRequest, rpc: Rpc) -> pb.ModelReadyResponse:
        async with self._answering(rpc):
            check_model(self._context, request.name, request.version or None)
            return pb.ModelReadyResponse(ready=not_ready_reason(self._context) is None)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, rpc: Rpc) -> pb.ServerMetadataResponse:
        async with self._answering(rpc):
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, rpc: Rpc) -> pb.ModelMetadataResponse:
        async with self._answering(rpc):
            check_model(self._context, request.name, request.version or None)
            return model_metadata_response(loaded_runtime(self._context).info())

    async def ModelInfer(self, request: pb.ModelInferRequest, rpc: Rpc) -> pb.ModelInferResponse:
        context = self._context
        async with self._answering(rpc):
            check_model(context, request.model_name, request.model_version or None)
            with counted(context) as outcome:
                runtime, executor = ready_runtime(context)
                info = runtime.info()
                decoded = decode_infer_request(request, info, context.max_batch_size)
                results = await run_inference(context, runtime, executor, decoded)
                response = encode_infer_response(info, decoded, results)
                outcome.status, outcome.batch_size = 200, decoded.batch_size
                return response


@dataclass(frozen=True)
class GrpcFrontEnd:
    server: grpc.aio.Server
    port: int

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls and connections at once; in-flight calls get `grace_s` to finish."""
        await self.server.stop(grace_s)


async def start(context: ServerContext, listen: GrpcListen, max_request_bytes: int) -> GrpcFrontEnd:
    """Bind and start the gRPC server on the running loop; ListenError when the address is unusable."""
    server = grpc.aio.server(
        options=[
            # Shared: every worker binds the port the supervisor holds; alone: a port someone else
            # holds is an error, never silently shared.
            ("grpc.so_reuseport", 1 if listen.shared else 0),
            ("grpc.max_receive_message_length", min(max_request_bytes, _MAX_MESSAGE_BYTES)),
            ("grpc.max_send_message_length", -1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(context), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(context), server)
    address = f"[{listen.host}]:{listen.port}" if ":" in listen.host else f"{listen.host}:{listen.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        await server.stop(None)
        raise _bind_failure(listen) from None
    await server.start()
    return GrpcFrontEnd(server, port)


def _bind_failure(listen: GrpcListen) -> ListenError:
    """gRPC says only "Failed to bind"; binding the same way ourselves tells the reason."""
    try:
        bind_socket(listen.host, listen.port, reuse_port=listen.shared, listen=False, scheme="grpc").close()
    except ListenError as exc:
        return exc
    return ListenError(
        f"cannot listen on {format_url(listen.host, listen.port, 'grpc')}: gRPC cannot bind it"
    )
