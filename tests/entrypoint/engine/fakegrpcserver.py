"""A loopback Open Inference Protocol gRPC server with controllable faults, for engine tests (the
gRPC twin of fakeserver.py).

Used in-process (``await start_server(GrpcBehaviour(...))`` in the test's event loop) and as a real
server process for ``warmgate run`` end-to-end tests::

    python fakegrpcserver.py --port P [--http-port Q] [--tls CERT KEY] [--model NAME]
                             [--first-delay S] [--load-after S] [--die-after N --die-code C]
                             [--fail-batch B] [--unsafe]

The model answers ``output0 = 2 * input + 1`` (FP32, the first input's shape) in
``raw_output_contents``. ``--http-port`` also opens an HTTP/1.1 port (as Triton and KServe do
beside gRPC), for tests that point a gRPC client at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.grpcapi import open_inference_grpc_pb2_grpc as pb_grpc
from warmgate.tensors import from_raw, to_raw

MODEL = "demo"


@dataclass
class GrpcBehaviour:
    model_name: str = MODEL
    # "safe" | "unsafe" (one output buffer shared by concurrent requests)
    model: str = "safe"
    # ServerReady's and ModelReady's answers; the model is "loaded" once `loaded` is True.
    server_ready: bool = True
    loaded: bool = True
    # Extra latency of the first request of each batch size, and of every request.
    first_delay: float = 0.0
    delay: float = 0.0
    # batch size -> (status code, details) answered instead of outputs.
    fail: dict[int, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    # Exit the process (script mode) once this many inference requests arrived.
    die_after: int | None = None
    die_code: int = 3
    metadata_inputs: list[dict[str, Any]] | None = None
    # Counters the tests read.
    calls: dict[int, int] = field(default_factory=dict)
    total_calls: int = 0
    max_in_flight: int = 0
    peers: set[str] = field(default_factory=set)


class FakeInferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, behaviour: GrpcBehaviour) -> None:
        self.behaviour = behaviour
        self.shared_buffer = np.zeros(0, dtype=np.float32)
        self.in_flight = 0
        self.warm: set[int] = set()

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.behaviour.server_ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        await self._known(request.name, context)
        return pb.ModelReadyResponse(ready=self.behaviour.loaded)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        await self._known(request.name, context)
        inputs = self.behaviour.metadata_inputs
        if inputs is None:
            inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        return pb.ModelMetadataResponse(
            name=request.name,
            platform="fake",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**each) for each in inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name="output0", datatype="FP32", shape=[-1, 4])],
        )

    async def _known(self, name: str, context: Any) -> None:
        if name != self.behaviour.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Model {name} not found")

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        behaviour = self.behaviour
        await self._known(request.model_name, context)
        behaviour.peers.add(context.peer())
        first = request.inputs[0]
        batch = int(first.shape[0]) if first.shape else 0
        behaviour.calls[batch] = behaviour.calls.get(batch, 0) + 1
        behaviour.total_calls += 1
        if behaviour.die_after is not None and behaviour.total_calls > behaviour.die_after:
            os._exit(behaviour.die_code)
        if batch in behaviour.fail:
            code, details = behaviour.fail[batch]
            await context.abort(code, details)
        if not behaviour.loaded:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {request.model_name} is not loaded")
        self.in_flight += 1
        behaviour.max_in_flight = max(behaviour.max_in_flight, self.in_flight)
        try:
            if batch not in self.warm and behaviour.first_delay:
                await asyncio.sleep(behaviour.first_delay)
            self.warm.add(batch)
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            values = from_raw(first.datatype, list(first.shape), request.raw_input_contents[0])
            data = (2.0 * values.astype(np.float32) + 1.0).astype(np.float32)
            if behaviour.model == "unsafe":
                # The bug under test: one output buffer shared by all requests; another request
                # may overwrite it while this one yields, so overlapping requests swap answers.
                self.shared_buffer = data.reshape(-1).copy()
                await asyncio.sleep(0.002)
                data = self.shared_buffer
        finally:
            self.in_flight -= 1
        output = pb.ModelInferResponse.InferOutputTensor(
            name="output0", datatype="FP32", shape=[int(d) for d in values.shape]
        )
        return pb.ModelInferResponse(
            model_name=request.model_name,
            outputs=[output],
            raw_output_contents=[to_raw("FP32", np.asarray(data, dtype=np.float32))],
        )


async def start_server(
    behaviour: GrpcBehaviour,
    port: int = 0,
    *,
    tls: tuple[bytes, bytes] | None = None,
    health_servicer: health.aio.HealthServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started grpc.aio server on 127.0.0.1 (port 0: any free one); returns it and its port."""
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FakeInferenceService(behaviour), server)
    if health_servicer is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"127.0.0.1:{port}"
    if tls is not None:
        key, cert = tls
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(address)
    await server.start()
    return server, bound


@contextlib.contextmanager
def serving_in_thread(behaviour: GrpcBehaviour) -> Iterator[int]:
    """The server on its own thread and event loop, as a separate server process would be: one
    loop shared with the client under test would make each wait on the other (a request after an
    idle gap then pays for the other side's wake-up, which reads as a cold first request)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakegrpcserver", daemon=True)
    thread.start()
    server, port = asyncio.run_coroutine_threadsafe(start_server(behaviour), loop).result(timeout=10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _http_port(port: int) -> Any:
    from aiohttp import web

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="")

    # A gRPC client at this port is the mistake under test, not the fake's: no traceback for it.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def serve(args: argparse.Namespace) -> None:
    behaviour = GrpcBehaviour(
        model_name=args.model,
        model="unsafe" if args.unsafe else "safe",
        loaded=args.load_after is None,
        first_delay=args.first_delay,
        die_after=args.die_after,
        die_code=args.die_code,
        fail={batch: (grpc.StatusCode.INTERNAL, "shape mismatch in layer 3") for batch in args.fail_batch},
    )
    tls = (Path(args.tls[1]).read_bytes(), Path(args.tls[0]).read_bytes()) if args.tls else None
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server, port = await start_server(behaviour, args.port, tls=tls, health_servicer=servicer)
    runner = await _http_port(args.http_port) if args.http_port else None
    print(f"fakegrpcserver listening on {port} pid {os.getpid()}", flush=True)
    if args.load_after is not None:
        await asyncio.sleep(args.load_after)
        behaviour.loaded = True
        print(f"fakegrpcserver loaded the model after {args.load_after:g}s", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        if runner is not None:
            await runner.cleanup()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, help="also serve HTTP/1.1 on this port")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve gRPC over TLS")
    parser.add_argument("--model", default=MODEL, help="the model name served")
    parser.add_argument("--first-delay", type=float, default=0.0)
    parser.add_argument("--load-after", type=float, help="ModelReady says not ready for this long (s)")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--die-code", type=int, default=3)
    parser.add_argument("--fail-batch", type=int, action="append", default=[], help="answer INTERNAL for it")
    parser.add_argument("--unsafe", action="store_true", help="share one output buffer across requests")
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
