"""Protocol oip-grpc against real grpc.aio servers on 127.0.0.1 (port 0, read back): config rules,
requests and answers (every datatype through raw contents, typed contents, malformed answers),
sending and how each failure is classified, readiness, metadata, and the start-up mistakes of
issue 13 item 5 (an HTTP port, TLS either way, nothing listening, an unknown model), each as one
line that arrives within seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.tlscert import self_signed
from warmgate.config import AutoShapes, ConfigError, ServerConfig
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.protocols import InvalidResponse, MetadataError, make_adapter, oipgrpc, validate
from warmgate.protocols.base import CONNECTION, INVALID, TIMEOUT
from warmgate.protocols.oipgrpc import OipGrpcAdapter
from warmgate.protocols.sniff import mismatch, sniff
from warmgate.tensors import NUMPY_DTYPES, Tensor, from_raw, to_raw

pytestmark = pytest.mark.timeout(30)

SERVICE = "inference.GRPCInferenceService"
TIMEOUT_2S = aiohttp.ClientTimeout(total=2)
# A start-up mistake must be named within seconds (issue 13 item 5); on loopback it takes ms.
FAST_S = 3.0

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


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    started: list[grpc.aio.Server] = []

    async def start(fake: FakeOip | None = None, **options: Any) -> int:
        server, port = await start_grpc(fake, **options)
        started.append(server)
        return port

    yield start
    for server in started:
        await server.stop(0)


@pytest.fixture
async def adapters() -> AsyncIterator[Callable[..., OipGrpcAdapter]]:
    """Adapters whose channels are closed after the test."""
    made: list[OipGrpcAdapter] = []

    def make(url: str, **extra: Any) -> OipGrpcAdapter:
        made.append(adapter_for(url, **extra))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"url": "grpc://127.0.0.1"}, "url needs a port for protocol oip-grpc (gRPC has no default port)"),
        ({"url": "grpc://127.0.0.1:8001/v2"}, "url must be scheme://host:port for protocol oip-grpc"),
        ({"url": "http://127.0.0.1:8001"}, "url must start with grpc:// or grpcs:// for protocol oip-grpc"),
        ({"url": "grpc://user:secret@127.0.0.1:8001"}, "url must not carry credentials"),
        ({"health_path": "/v2/health/ready"}, "health_path is for HTTP protocols"),
        ({"live_path": "/live"}, "live_path is for HTTP protocols"),
        ({"binary_tensors": True}, "binary_tensors is not used by protocol oip-grpc"),
        ({"http": {"path": "/"}}, "http is not used by protocol oip-grpc"),
    ],
)
def test_config_rules_name_the_field_in_one_line(extra: dict[str, Any], problem: str) -> None:
    raw = {"url": "grpc://127.0.0.1:8001", **extra}
    with pytest.raises(ConfigError) as caught:
        make_adapter(config(**raw) if "url" in extra else config(raw.pop("url"), **raw))
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_valid_urls_and_the_grpc_health_service_option() -> None:
    assert adapter_for("grpcs://models.example:443").secure
    assert adapter_for("grpc://[::1]:8001").target == "[::1]:8001"
    assert adapter_for("grpc://127.0.0.1:8001", grpc_health_service="").server.grpc_health_service == ""
    with pytest.raises(ConfigError, match="grpc_health_service is not used by protocol oip"):
        make_adapter(
            ServerConfig.model_validate({"url": "http://h:1", "protocol": "oip", "grpc_health_service": ""})
        )


def test_importing_the_protocol_loads_no_grpc_protobuf_or_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from warmgate.protocols.registry import adapters; adapters(); "
        "print(sorted(m for m in ('grpc', 'google.protobuf', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---- requests and answers --------------------------------------------------------------------


def test_build_serialises_one_model_infer_request_with_raw_contents() -> None:
    adapter = adapter_for("grpc://127.0.0.1:8001", model_version="3")
    pixels = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = adapter.build([Tensor("x", "FP32", pixels), Tensor("ids", "INT64", np.array([[7], [8]]))], 2)
    assert (request.method, request.batch_size) == ("gRPC", 2)
    assert request.url == "grpc://127.0.0.1:8001/inference.GRPCInferenceService/ModelInfer"
    assert request.body is not None
    decoded = pb.ModelInferRequest.FromString(request.body)
    assert (decoded.model_name, decoded.model_version) == ("m", "3")
    assert [(t.name, t.datatype, list(t.shape)) for t in decoded.inputs] == [
        ("x", "FP32", [2, 3]),
        ("ids", "INT64", [2, 1]),
    ]
    assert decoded.raw_input_contents == [pixels.tobytes(), np.array([7, 8], dtype="<i8").tobytes()]
    assert not decoded.inputs[0].HasField("contents")


def values_of(datatype: str) -> np.ndarray[Any, Any]:
    """Two rows of awkward values for each datatype: extremes, zero, non-UTF-8 bytes."""
    if datatype == "BYTES":
        return np.array([[b"", b"caf\xc3\xa9", b"\xff\x00"], [b"a" * 300, b"x", b"\n"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = NUMPY_DTYPES[datatype]
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, info.max], [1, info.max - 1, 2]], dtype=dtype)
    return np.array([[0.0, -1.5, 65504.0], [1e-3, 3.25, -0.0]], dtype=dtype)


def expected(datatype: str, values: np.ndarray[Any, Any]) -> list[Any]:
    flat = values.reshape(-1).tolist()
    return [item.decode("utf-8", "backslashreplace") for item in flat] if datatype == "BYTES" else flat


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
async def test_every_datatype_round_trips_through_raw_contents(
    datatype: str, servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
    port = await servers(FakeOip())
    adapter = adapters(f"grpc://127.0.0.1:{port}")
    values = values_of(datatype)
    result = await adapter.send(None, adapter.build([Tensor("t", datatype, values)], 2), TIMEOUT_2S)
    result, outputs = validate(adapter, result)
    assert result.ok, result.message
    assert outputs is not None
    got = outputs["out_t"]
    assert (got.datatype, got.shape) == (datatype, (2, 3))
    assert got.data == expected(datatype, values)
    assert [type(v) for v in got.data] == [type(v) for v in expected(datatype, values)]


TYPED = {
    "BOOL": ("bool_contents", [True, False]),
    "INT8": ("int_contents", [-128, 127]),
    "INT16": ("int_contents", [-32768, 5]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1]),
    "UINT8": ("uint_contents", [0, 255]),
    "UINT16": ("uint_contents", [1, 65535]),
    "UINT32": ("uint_contents", [0, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1]),
    "FP32": ("fp32_contents", [0.5, -2.25]),
    "FP64": ("fp64_contents", [1e300, -1e-300]),
    "BYTES": ("bytes_contents", [b"ok", b"\xfe"]),
}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_answers_decode(datatype: str) -> None:
    field_name, values = TYPED[datatype]
    body = answer(output("y", datatype, [2], **{field_name: values}))
    got = adapter_for("grpc://h:1").decode(body, 2)["y"]
    want = [v.decode("utf-8", "backslashreplace") for v in values] if datatype == "BYTES" else values
    assert (got.data, got.shape, got.datatype) == (want, (2,), datatype)


def test_bf16_raw_contents_decode_as_the_upper_half_of_fp32() -> None:
    floats = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype="<f4")
    bf16 = (floats.view("<u4") >> 16).astype("<u2").tobytes()
    got = adapter_for("grpc://h:1").decode(answer(output("y", "BF16", [4]), raw=[bf16]), 4)["y"]
    assert got.data == pytest.approx([1.0, -2.5, 0.15625, 3.0e38], rel=1e-2)


HUGE = 2**62


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xff\xff\xff", "answer is not a ModelInferResponse"),
        (answer(), "response has no outputs"),
        (
            answer(output("y", "FP32", [2]), raw=[b"\x00" * 7]),
            "7 raw bytes cannot be a FP32 tensor of shape [2]",
        ),
        (
            answer(output("a", "FP32", [1]), output("b", "FP32", [1]), raw=[b"\x00" * 4]),
            "response has 2 outputs but 1 raw_output_contents",
        ),
        (
            answer(output("y", "FLOAT32", [1], fp32_contents=[1.0])),
            "datatype 'FLOAT32' is not an Open Inference",
        ),
        (answer(output("y", "FP32", [-1], fp32_contents=[1.0])), "element 0 is negative"),
        (answer(output("y", "FP32", [1] * 65)), "65 dimensions, more than 64"),
        (answer(output("y", "FP32", [HUGE, HUGE]), raw=[b"\x00" * 8]), "8 raw bytes cannot be a FP32 tensor"),
        (answer(output("y", "BYTES", [HUGE]), raw=[b"\x01\x00\x00\x00a"]), "BYTES contents hold 1 elements"),
        (
            answer(output("y", "FP32", [HUGE], fp32_contents=[1.0])),
            "holds 4,611,686,018,427,387,904 values, data has 1",
        ),
        (answer(output("y", "FP16", [1])), "datatype FP16 comes only as raw_output_contents"),
        (answer(output("y", "INT8", [1], int_contents=[300])), "value 300 is out of range for INT8"),
        (answer(output("y", "BYTES", [1]), raw=[b"\xff\x00\x00\x00ab"]), "BYTES element 0 claims 255 bytes"),
        (answer(output("y", "BF16", [2]), raw=[b"\x00" * 3]), "3 raw bytes cannot be a BF16 tensor"),
        (answer(output("y", "FP32", [3, 1], fp32_contents=[1, 2, 3])), "does not lead with the batch size 2"),
    ],
)
def test_malformed_answers_are_invalid_responses_in_one_line(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        adapter_for("grpc://h:1").decode(body, 2)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


VALID = answer(output("y", "FP32", [2, 2]), raw=[np.arange(4, dtype="<f4").tobytes()])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200), st.tuples(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8))
    )
)
def test_no_bytes_make_the_decoder_raise_anything_but_invalid_response(mutation: Any) -> None:
    if isinstance(mutation, tuple):  # a valid answer with some bytes overwritten
        at, patch = mutation
        body = VALID[:at] + patch + VALID[at + len(patch) :]
    else:
        body = mutation
    try:
        adapter_for("grpc://h:1").decode(body, 2)
    except InvalidResponse as exc:
        assert "\n" not in str(exc)


# ---- sending ---------------------------------------------------------------------------------


async def test_send_classifies_each_failure(
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
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
    servers: Callable[..., Awaitable[int]],
    adapters: Callable[..., OipGrpcAdapter],
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


async def test_each_known_worker_gets_its_own_connection(
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
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


async def test_ready_only_once_the_server_and_the_model_are(
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
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
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
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
    fake: FakeOip, said: str, servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
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
    fake: FakeOip, servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
    port = await servers(fake)
    assert await adapters(f"grpc://127.0.0.1:{port}").unknown_model(None, 1) is None


async def test_shapes_come_from_model_metadata(
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
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


async def test_an_http_only_port_is_named_as_such(
    aiohttp_server: Any, adapters: Callable[..., OipGrpcAdapter]
) -> None:
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


async def test_grpcs_at_a_plaintext_port(
    servers: Callable[..., Awaitable[int]], adapters: Callable[..., OipGrpcAdapter]
) -> None:
    port = await servers(FakeOip())
    url = f"grpcs://127.0.0.1:{port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    assert reason.startswith(f"{url} ServerReady: UNAVAILABLE: the port does not speak TLS: use grpc:// (")
    assert "WRONG_VERSION_NUMBER" in reason
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == f"{url} speaks plaintext HTTP/2 (gRPC without TLS), not TLS: use grpc://"


async def test_grpc_at_a_tls_port(
    servers: Callable[..., Awaitable[int]],
    adapters: Callable[..., OipGrpcAdapter],
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


async def test_nothing_listening(adapters: Callable[..., OipGrpcAdapter], unused_tcp_port: int) -> None:
    url = f"grpc://127.0.0.1:{unused_tcp_port}"
    reason = await timed(adapters(url).check_ready(None, 1))
    assert reason == f"{url} ServerReady: UNAVAILABLE: Failed to connect to remote host: Connection refused"
    assert await sniff(url, 1) is None


async def test_the_reverse_an_http_protocol_at_a_grpc_port(servers: Callable[..., Awaitable[int]]) -> None:
    port = await servers(FakeOip())
    url = f"http://127.0.0.1:{port}"
    heard = await timed(sniff(url, 1))
    assert mismatch(url, heard) == (
        f"{url} speaks HTTP/2 (gRPC?), not HTTP/1.1: is server.url the HTTP port "
        "(or is the server's protocol oip-grpc)?"
    )


async def test_a_check_never_raises_even_when_the_channel_cannot_be_used(
    adapters: Callable[..., OipGrpcAdapter],
) -> None:
    adapter = adapters("grpc://127.0.0.1:1")
    await adapter.check_ready(None, 0.5)
    await adapter.aclose()
    # Closed: the next check opens a fresh channel rather than failing on the closed one.
    reason = await adapter.check_live(None, 0.5)
    assert reason is not None and reason.startswith("grpc://127.0.0.1:1 ServerLive: UNAVAILABLE")
