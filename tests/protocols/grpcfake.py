"""A raw Open Inference Protocol gRPC server for the protocol tests: no serialisers, so a test
controls every byte ModelInfer answers; readiness, metadata and errors are its attributes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2_grpc

from warmgate.config import ServerConfig
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.protocols import make_adapter
from warmgate.protocols.oipgrpc import OipGrpcAdapter
from warmgate.tensors import from_raw, to_raw

SERVICE = "inference.GRPCInferenceService"
TIMEOUT_2S = aiohttp.ClientTimeout(total=2)

InferHandler = Callable[[pb.ModelInferRequest, grpc.aio.ServicerContext], Awaitable[bytes]]


def config(url: str, **extra: Any) -> ServerConfig:
    return ServerConfig.model_validate({"url": url, "protocol": "oip-grpc", "model": "m", **extra})


def adapter_for(url: str, **extra: Any) -> OipGrpcAdapter:
    made = make_adapter(config(url, **extra))
    assert isinstance(made, OipGrpcAdapter)
    return made


def answer(*outputs: pb.ModelInferResponse.InferOutputTensor, raw: list[bytes] | None = None) -> bytes:
    return pb.ModelInferResponse(
        model_name="m", outputs=list(outputs), raw_output_contents=raw or []
    ).SerializeToString()


def output(
    name: str, datatype: str, shape: list[int], **contents: Any
) -> pb.ModelInferResponse.InferOutputTensor:
    return pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


async def echo_raw(request: pb.ModelInferRequest, _context: grpc.aio.ServicerContext) -> bytes:
    """Decode every input with from_raw and answer it back as raw_output_contents."""
    outputs, raw = [], []
    for index, tensor in enumerate(request.inputs):
        values = from_raw(tensor.datatype, list(tensor.shape), request.raw_input_contents[index])
        outputs.append(output(f"out_{tensor.name}", tensor.datatype, list(tensor.shape)))
        raw.append(to_raw(tensor.datatype, values))
    return answer(*outputs, raw=raw)


@dataclass
class FakeOip:
    """A raw OIP gRPC server (no serialisers: the test controls every byte of ModelInfer)."""

    model: str = "m"
    server_ready: bool = True
    model_ready: bool = True
    infer: InferHandler = echo_raw
    # Status and details ModelReady / ModelMetadata abort with instead of answering.
    model_ready_error: tuple[grpc.StatusCode, str] | None = None
    metadata_error: tuple[grpc.StatusCode, str] | None = None
    metadata_inputs: list[pb.ModelMetadataResponse.TensorMetadata] = field(default_factory=list)
    peers: set[str] = field(default_factory=set)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        async def server_live(_body: bytes, _context: Any) -> bytes:
            return pb.ServerLiveResponse(live=True).SerializeToString()

        async def server_ready(_body: bytes, _context: Any) -> bytes:
            return pb.ServerReadyResponse(ready=self.server_ready).SerializeToString()

        async def model_ready(body: bytes, context: Any) -> bytes:
            if self.model_ready_error is not None:
                await context.abort(*self.model_ready_error)
            if pb.ModelReadyRequest.FromString(body).name != self.model:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
            return pb.ModelReadyResponse(ready=self.model_ready).SerializeToString()

        async def model_metadata(body: bytes, context: Any) -> bytes:
            if self.metadata_error is not None:
                await context.abort(*self.metadata_error)
            request = pb.ModelMetadataRequest.FromString(body)
            return pb.ModelMetadataResponse(
                name=request.name, inputs=self.metadata_inputs
            ).SerializeToString()

        async def model_infer(body: bytes, context: Any) -> bytes:
            self.peers.add(context.peer())
            return await self.infer(pb.ModelInferRequest.FromString(body), context)

        methods = {
            "ServerLive": server_live,
            "ServerReady": server_ready,
            "ModelReady": model_ready,
            "ModelMetadata": model_metadata,
            "ModelInfer": model_infer,
        }
        return {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}


async def start_grpc(
    fake: FakeOip | None = None,
    *,
    tls: tuple[Path, Path] | None = None,
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    if fake is not None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, fake.handlers()),))
    if health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is not None:
        cert, key = tls
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
