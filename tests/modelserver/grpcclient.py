"""gRPC clients for the tests, built straight from the generated stubs (not warmgate's adapter)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpc
import numpy as np

from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.modelserver.dataplane import WORKER_HEADER
from warmgate.tensors import to_raw

DEADLINE_S = 30.0


def channel(target: str, *, own_connection: bool = False) -> grpc.aio.Channel:
    """A channel without message size limits; with own_connection, one TCP connection of its own
    (channels with the same target and options otherwise share one in this process)."""
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", -1)]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.insecure_channel(target, options=options)


def raw_request(
    model: str, tensors: dict[str, tuple[str, np.ndarray]], **fields: Any
) -> pb.ModelInferRequest:
    """A ModelInferRequest with every input in raw_input_contents: {name: (datatype, array)}."""
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, (datatype, array) in tensors.items():
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(to_raw(datatype, array))
    return request


async def worker_of(call: Any) -> str:
    """The worker that answered a finished call (its trailing metadata)."""
    metadata = dict(await call.trailing_metadata())
    worker: str = metadata[WORKER_HEADER]
    return worker


async def failure(call: Any) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test when it succeeds."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


async def wait_for_port(port: int, deadline_s: float = DEADLINE_S) -> None:
    """Until 127.0.0.1:port accepts connections."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            await asyncio.sleep(0.02)  # poll interval, not synchronisation
