"""Protocol oip-grpc over real grpc.aio servers on 127.0.0.1: sending and how each failure is
classified, readiness (server and model, or the standard health service), unknown models,
metadata for `shapes: auto`, and the start-up mistakes of issue 13 item 5 (an HTTP port, TLS
either way, nothing listening, the reverse), each one line that arrives within seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from tests.protocols.conftest import Adapters, Servers
from tests.protocols.grpcfake import SERVICE, TIMEOUT_2S, FakeOip, answer, echo_raw, output
from warmgate.config import AutoShapes
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.protocols import MetadataError, oipgrpc
from warmgate.protocols.base import CONNECTION, INVALID, TIMEOUT
from warmgate.protocols.grpcanswers import describe_rpc_error
from warmgate.protocols.sniff import mismatch, sniff
from warmgate.tensors import Tensor

pytestmark = pytest.mark.timeout(30)

# A start-up mistake must be named within seconds (issue 13 item 5); on loopback it takes ms.
FAST_S = 3.0


# ---- sending ---------------------------------------------------------------------------------


async def test_send_classifies_each_failure(servers: Servers, adapters: Adapters) -> None:
    async def infer(request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> bytes:
        batch = request.inputs[0].shape[0]
        if batch == 3:
            await asyncio.sleep(30)
        if batch == 4:
            await context.abort(grpc.StatusCode.INTERNAL, "RuntimeError: shape mismatch\nin layer 3")
        return await echo_raw(request, context)

    port = await servers(FakeOip(infer=infer))
    adapter = adapters(f"grpc://127.0.0.1:{port}")

    def request(batch: int) -> Any:
        return adapter.build([Tensor("x", "FP32", np.ones((batch, 2), dtype=np.float32))], batch)

    ok = await adapter.send(None, request(1), TIMEOUT_2S)
    assert ok.ok and ok.latency_s > 0 and ok.request is not None
    slow = await adapter.send(None, request(3), aiohttp.ClientTimeout(total=0.2))
    assert slow.kind == TIMEOUT
    assert slow.message == (
        f"no response within 0.2s (server.request_timeout_s) from grpc://127.0.0.1:{port}"
        "/inference.GRPCInferenceService/ModelInfer"
    )
    failed = await adapter.send(None, request(4), TIMEOUT_2S)
    assert failed.kind == "grpc_internal"
    assert failed.message == (
        f"gRPC INTERNAL: RuntimeError: shape mismatch in layer 3 from grpc://127.0.0.1:{port}"
        "/inference.GRPCInferenceService/ModelInfer"
    )

    nobody = adapters("grpc://127.0.0.1:1")
    alone = nobody.build([Tensor("x", "FP32", np.ones((1, 2), np.float32))], 1)
    refused = await nobody.send(None, alone, TIMEOUT_2S)
    assert refused.kind == CONNECTION
    assert "UNAVAILABLE: Failed to connect to remote host: Connection refused" in refused.message


async def test_an_answer_over_the_cap_is_an_invalid_response_not_a_memory_hazard(
    servers: Servers,
    adapters: Adapters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(oipgrpc, "MAX_ANSWER_BYTES", 1 << 20)

    async def huge(_request: pb.ModelInferRequest, _context: Any) -> bytes:
        return answer(output("y", "UINT8", [2 << 20]), raw=[bytes(2 << 20)])

    port = await servers(FakeOip(infer=huge))
    adapter = adapters(f"grpc://127.0.0.1:{port}")
    request = adapter.build([Tensor("x", "UINT8", np.zeros((1, 1), np.uint8))], 1)
    result = await adapter.send(None, request, TIMEOUT_2S)
    assert result.kind == INVALID
    assert result.message.startswith("answer is over the 1 MiB cap on an answer from grpc://127.0.0.1:")


async def test_each_known_worker_gets_its_own_connection(servers: Servers, adapters: Adapters) -> None:
    # Workers sharing a port (SO_REUSEPORT) are balanced per connection: one connection for all
    # requests would warm one worker.
    fake = FakeOip()
    port = await servers(fake)
    adapter = adapters(f"grpc://127.0.0.1:{port}", workers=3)
    request = adapter.build([Tensor("x", "FP32", np.ones((1, 2), np.float32))], 1)
    results = await asyncio.gather(*(adapter.send(None, request, TIMEOUT_2S) for _ in range(6)))
    assert all(r.ok for r in results)
    assert len(fake.peers) == 3


# ---- health and metadata ---------------------------------------------------------------------


async def test_ready_only_once_the_server_and_the_model_are(servers: Servers, adapters: Adapters) -> None:
    fake = FakeOip(server_ready=False, model_ready=False)
    port = await servers(fake)
    url = f"grpc://127.0.0.1:{port}"
    adapter = adapters(url, model_version="2")
    assert adapter.health_url == f"{url} (ServerReady, ModelReady m, version 2)"
    assert await adapter.check_ready(None, 1) == f"{url} ServerReady: not ready"
    fake.server_ready = True
    assert await adapter.check_ready(None, 1) == f"{url} ModelReady(m, version 2): not ready"
    fake.model_ready = True  # the model has loaded
    assert await adapter.check_ready(None, 1) is None
    assert await adapter.check_live(None, 1) is None


async def test_the_grpc_health_service_judges_readiness_when_configured(
    servers: Servers, adapters: Adapters
) -> None:
    servicer = health.aio.HealthServicer()
    await servicer.set("inference", health_pb2.HealthCheckResponse.NOT_SERVING)
    # ModelReady would say "not ready": the health service is asked instead.
    port = await servers(FakeOip(model_ready=False), health_servicer=servicer)
    url = f"grpc://127.0.0.1:{port}"
    adapter = adapters(url, grpc_health_service="inference")
    assert adapter.health_url == f"{url} (grpc.health.v1.Health/Check 'inference')"
    reason = await adapter.check_ready(None, 1)
    assert reason == f"{url} grpc.health.v1.Health/Check('inference'): NOT_SERVING"
    await servicer.set("inference", health_pb2.HealthCheckResponse.SERVING)
    assert await adapter.check_ready(None, 1) is None
    unknown = adapters(url, grpc_health_service="other")
    reason = await unknown.check_ready(None, 1)
    assert reason is not None and reason.startswith(f"{url} grpc.health.v1.Health/Check('other'): NOT_FOUND")


@pytest.mark.parametrize(
    ("fake", "said"),
    [
        (FakeOip(model="other"), "ModelReady(m): NOT_FOUND: no such model"),
        (
            FakeOip(model_ready=False, metadata_error=(grpc.StatusCode.NOT_FOUND, "Model m not found")),
            "ModelMetadata(m): NOT_FOUND: Model m not found",
        ),
        (
            FakeOip(model_ready_error=(grpc.StatusCode.UNKNOWN, "Model with name m does not exist.")),
            "ModelReady(m): UNKNOWN: Model with name m does not exist.",
        ),
    ],
)
async def test_an_unknown_model_is_named(
    fake: FakeOip, said: str, servers: Servers, adapters: Adapters
) -> None:
    port = await servers(fake)
    url = f"grpc://127.0.0.1:{port}"
    started = time.monotonic()
    reason = await adapters(url).unknown_model(None, 1)
    assert reason == f"server.model 'm' is not served: {url} {said}"
    assert time.monotonic() - started < FAST_S


@pytest.mark.parametrize(
    "fake",
    [
        FakeOip(model_ready=False),  # loading: metadata answers
        FakeOip(server_ready=False, model="other"),  # the server is not ready yet: cannot tell
        FakeOip(model_ready_error=(grpc.StatusCode.UNAVAILABLE, "model m is loading")),
        FakeOip(
            model_ready=False, metadata_error=(grpc.StatusCode.UNAVAILABLE, "unknown model: m is loading")
        ),
    ],
)
async def test_a_loading_model_is_not_called_unknown(
    fake: FakeOip, servers: Servers, adapters: Adapters
) -> None:
    port = await servers(fake)
    assert await adapters(f"grpc://127.0.0.1:{port}").unknown_model(None, 1) is None


async def test_shapes_come_from_model_metadata(servers: Servers, adapters: Adapters) -> None:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    fake = FakeOip(
        metadata_inputs=[
            tensor(name="x", datatype="FP32", shape=[-1, 3, -1]),
            tensor(name="k", datatype="INT64", shape=[-1, 1]),
        ]
    )
    port = await servers(fake)
    url = f"grpc://127.0.0.1:{port}"
    shapes = await adapters(url).discover_shapes(None, AutoShapes(batch_sizes=[1, 4], dynamic_dim=8), 1)
    assert [(s.name, s.batch_size) for s in shapes] == [("auto-bs1", 1), ("auto-bs4", 4)]
    assert shapes[0].inputs["x"].dims == [3, 8] and shapes[0].inputs["k"].datatype == "INT64"

    fake.metadata_inputs = []
    with pytest.raises(MetadataError) as caught:
        await adapters(url).discover_shapes(None, AutoShapes(), 1)
    assert str(caught.value).startswith(f"{url} ModelMetadata(m): model metadata lists no inputs")
    fake.metadata_error = (grpc.StatusCode.NOT_FOUND, "Model m not found")
    with pytest.raises(MetadataError, match=r"ModelMetadata\(m\): NOT_FOUND: Model m not found$"):
        await adapters(url).discover_shapes(None, AutoShapes(), 1)


# ---- start-up mistakes (issue 13 item 5): one line, within seconds ----------------------------


async def timed(check: Awaitable[Any]) -> Any:
    started = time.monotonic()
    result = await check
    assert time.monotonic() - started < FAST_S
    return result


async def test_an_http_only_port_is_named_as_such(aiohttp_server: Any, adapters: Adapters) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/v2/health/ready", ok)
    server = await aiohttp_server(app)
    url = f"grpc://127.0.0.1:{server.port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    assert reason.startswith(
        f"{url} ServerReady: UNAVAILABLE: the port answers HTTP/1.1, not gRPC: is server.url the gRPC port? ("
    )
    assert "\n" not in reason
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == f"{url} answers HTTP/1.1, not gRPC: is server.url the gRPC port?"


async def test_grpcs_at_a_plaintext_port(servers: Servers, adapters: Adapters) -> None:
    port = await servers(FakeOip())
    url = f"grpcs://127.0.0.1:{port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    assert reason.startswith(f"{url} ServerReady: UNAVAILABLE: the port does not speak TLS: use grpc:// (")
    assert "WRONG_VERSION_NUMBER" in reason
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == f"{url} speaks plaintext HTTP/2 (gRPC without TLS), not TLS: use grpc://"


async def test_grpc_at_a_tls_port(
    servers: Servers,
    adapters: Adapters,
    certificate: tuple[Path, Path],
) -> None:
    port = await servers(FakeOip(), tls=certificate)
    url = f"grpc://127.0.0.1:{port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    # gRPC itself only hears a closed socket: the reason suggests TLS, the sniff proves it.
    assert reason.startswith(
        f"{url} ServerReady: UNAVAILABLE: the port closed the connection: if it expects TLS, use grpcs://"
    )
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == f"{url} expects TLS, but server.url is plaintext: use grpcs://"
    # grpcs:// to it: TLS speaks, the certificate is not trusted by the default roots.
    secure = f"grpcs://127.0.0.1:{port}"
    reason = await timed(adapters(secure).check_ready(None, 1))
    assert (
        "UNAVAILABLE: the server's TLS certificate is not trusted by the default root certificates" in reason
    )
    assert mismatch(secure, await sniff(secure, 1)) is None


async def test_nothing_listening(adapters: Adapters, unused_tcp_port: int) -> None:
    url = f"grpc://127.0.0.1:{unused_tcp_port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    assert reason == f"{url} ServerReady: UNAVAILABLE: Failed to connect to remote host: Connection refused"
    assert await sniff(url, 1) is None


async def test_the_reverse_an_http_protocol_at_a_grpc_port(servers: Servers) -> None:
    port = await servers(FakeOip())
    url = f"http://127.0.0.1:{port}"
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == (
        f"{url} speaks HTTP/2 (gRPC?), not HTTP/1.1: is server.url the HTTP port "
        "(or is the server's protocol oip-grpc)?"
    )


async def test_a_check_never_raises_even_when_the_channel_cannot_be_used(
    adapters: Adapters,
) -> None:
    adapter = adapters("grpc://127.0.0.1:1")
    await adapter.check_ready(None, 0.5)
    await adapter.aclose()
    # Closed: the next check opens a fresh channel rather than failing on the closed one.
    reason = await adapter.check_live(None, 0.5)
    assert reason is not None and reason.startswith("grpc://127.0.0.1:1 ServerLive: UNAVAILABLE")


async def test_a_server_that_comes_up_is_seen_at_the_next_check_not_after_a_backoff(
    adapters: Adapters, unused_tcp_port: int
) -> None:
    url = f"grpc://127.0.0.1:{unused_tcp_port}"
    adapter = adapters(url)
    for _ in range(8):  # gRPC's own reconnect backoff would have grown past a second by now
        reason = await adapter.check_ready(None, 0.5)
        assert reason is not None and "Connection refused" in reason
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, FakeOip().handlers()),))
    server.add_insecure_port(f"127.0.0.1:{unused_tcp_port}")
    await server.start()
    try:
        assert await adapter.check_ready(None, 0.5) is None
    finally:
        await server.stop(0)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("details", "secure", "worded"),
    [
        # Hints only for failures to connect: a connection that broke mid-call is not a TLS port.
        ("Socket closed", False, "UNAVAILABLE: Socket closed"),
        (
            "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed",
            False,
            "UNAVAILABLE: the port closed the connection: if it expects TLS, use grpcs:// (Socket closed)",
        ),
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:5: Failed to connect "
            "to remote host: Connection refused",
            True,
            "UNAVAILABLE: Failed to connect to remote host: Connection refused",
        ),
        ("", False, "UNAVAILABLE: (no details)"),
        ("bad\x1b[31m\nthing " + "x" * 300, False, "UNAVAILABLE: bad\\x1b[31m thing " + "x" * 219 + "..."),
    ],
)
def test_grpc_errors_are_worded_in_one_printable_line(details: str, secure: bool, worded: str) -> None:
    assert describe_rpc_error(rpc_error(grpc.StatusCode.UNAVAILABLE, details), secure=secure) == worded
