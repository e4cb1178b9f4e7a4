"""Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`): Triton, KServe,
MLServer, TorchServe's KServe mode and warmgate's own modelserver.

    server.url: grpc://host:port (plaintext) or grpcs://host:port (TLS, default root certificates)

Readiness asks ServerReady and ModelReady together (KServe's server-ready is always true), or the
standard `grpc.health.v1.Health/Check` for `server.grpc_health_service`; liveness is ServerLive;
`shapes: auto` reads ModelMetadata. Requests carry their tensors in `raw_input_contents` (what
Triton's and KServe's clients send), built and serialised once per shape and sent as bytes through
a method with no serialiser, so the load test pays no protobuf encoding per request. Answers are
decoded from `raw_output_contents` or from typed `contents`, and checked like the REST protocol's
(grpcanswers.py).

Transport (grpc.aio, created lazily inside the running loop and closed by `aclose`):
- a control channel for health and metadata, and `server.workers` data channels (1 when unknown)
  for ModelInfer, each with its own TCP connection: a health check never queues behind the load
  test (as the HTTP pool keeps connections free for it), and the warmup's first wave reaches
  several workers of a server whose workers share the port (SO_REUSEPORT balances connections,
  not requests: one HTTP/2 connection would warm one worker);
- answers are capped by the channel's receive limit (64 MiB, as HTTP answers; gRPC's default 4 MiB
  would fail a large batch), requests are not (warmup.max_payload_bytes bounds them when planned);
- while gRPC backs off between reconnection attempts every call fails at once, and its default
  backoff grows to two minutes: a server that came up would go unseen that long. So a control
  channel that could not connect is replaced (the next check connects at once, as an HTTP poll
  does), and data channels back off to at most `MAX_RECONNECT_BACKOFF_MS`;
- no HTTP proxy from the environment, as the HTTP client (the server is on the pod's network).

grpc and protobuf are imported inside the functions that use them: the registry imports every
protocol module on every config load, before the server is spawned.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from warmgate.config import AutoShapes, ServerConfig, Shape
from warmgate.protocols.answers import MAX_ANSWER_BYTES, MAX_METADATA_BYTES, Outputs
from warmgate.protocols.base import (
    CONNECTION,
    INVALID,
    TIMEOUT,
    Adapter,
    EncodeError,
    MetadataError,
    PreparedRequest,
    Result,
)
from warmgate.protocols.grpcanswers import describe_rpc_error, one_line, parse_infer_response
from warmgate.protocols.oip import shapes_from_metadata

if TYPE_CHECKING:
    import grpc
    import grpc.aio

    from warmgate.tensors import Tensor

T = TypeVar("T")

SERVICE = "inference.GRPCInferenceService"
INFER_PATH = f"/{SERVICE}/ModelInfer"
HEALTH_CHECK = "grpc.health.v1.Health/Check"
GRPC_HEADERS = {"Content-Type": "application/grpc"}
# Reconnection backoff of the data channels: the first retry soon (a server restarting), later
# ones at most a second apart (gRPC's own default backoff grows to two minutes). The health wait
# polls more often (health.py MAX_POLL_INTERVAL_S) because it decides when warming starts.
INITIAL_RECONNECT_BACKOFF_MS = 20
MAX_RECONNECT_BACKOFF_MS = 1000
# How long a replaced control channel's calls may go on (control RPCs have shorter deadlines).
RETIRED_CHANNEL_GRACE_S = 30.0
# Data channels: one per known server worker, within reason.
MAX_DATA_CHANNELS = 64
# Error details that mean "no such model" whatever the status code (KServe, MLServer wordings).
UNKNOWN_MODEL_DETAILS = re.compile(r"unknown model|model\b.*\b(not found|does not exist)", re.IGNORECASE)


class OipGrpcAdapter(Adapter):
    name = "oip-grpc"
    answers_lead_with_batch = True
    url_schemes = ("grpc", "grpcs")
    server_options = frozenset({"grpc_health_service"})

    def __init__(self, server: ServerConfig) -> None:
        super().__init__(server)
        parts = urlsplit(server.url)
        host = parts.hostname or ""
        self.target = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
        self.secure = parts.scheme == "grpcs"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: grpc.aio.Channel | None = None
        self._data: list[grpc.aio.Channel] = []
        self._infer: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = []
        self._turn = itertools.count()
        # Control channels replaced after failing to connect, closing once their calls are done.
        self._retiring: set[asyncio.Future[None]] = set()

    @classmethod
    def check_server(cls, server: ServerConfig) -> None:
        super().check_server(server)
        parts = urlsplit(server.url)
        if parts.port is None:
            raise ValueError(
                f"url needs a port for protocol {cls.name} (gRPC has no default port), got {server.url}"
            )
        if parts.path not in ("", "/"):
            raise ValueError(f"url must be scheme://host:port for protocol {cls.name}, got {server.url}")
        if parts.username is not None:
            raise ValueError(f"url must not carry credentials for protocol {cls.name} (gRPC ignores them)")
        for option in ("health_path", "live_path"):
            if getattr(server, option) is not None:
                raise ValueError(
                    f"{option} is for HTTP protocols; protocol {cls.name} asks ServerReady and "
                    "ModelReady (or server.grpc_health_service): remove it"
                )

    # ---- transport ---------------------------------------------------------------------------

    def _channel(self, receive_limit: int) -> grpc.aio.Channel:
        import grpc

        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", receive_limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            # Channels with equal arguments would share one connection through the global pool.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.enable_http_proxy", 0),
            ("grpc.primary_user_agent", "warmgate"),
        ]
        if self.secure:
            return grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
        return grpc.aio.insecure_channel(self.target, options=options)

    def _in_this_loop(self) -> None:
        """A channel belongs to the loop it was made in, and an adapter may outlive one (tests,
        `asyncio.run` twice): another loop's channels are forgotten, not used."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._control, self._data, self._infer, self._retiring = None, [], [], set()

    def _control_channel(self) -> grpc.aio.Channel:
        self._in_this_loop()
        if self._control is None:
            self._control = self._channel(MAX_METADATA_BYTES)
        return self._control

    def _next_infer(self) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        self._in_this_loop()
        if not self._infer:
            count = min(MAX_DATA_CHANNELS, max(1, self.server.workers or 1))
            self._data = [self._channel(MAX_ANSWER_BYTES) for _ in range(count)]
            # No serialisers: requests are serialised once by `build`, answers decoded by `parse`.
            self._infer = [channel.unary_unary(INFER_PATH) for channel in self._data]
        return self._infer[next(self._turn) % len(self._infer)]

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Replace a control channel that could not connect: the next check connects at once, as
        an HTTP poll does, instead of failing fast until gRPC's reconnect backoff ends (a server
        that came up would go unseen that long). The checks' own cadence (the health wait's
        polls, the probe's cache) is then the retry schedule; the old channel closes once the
        calls still on it are done."""
        if self._control is channel:
            self._control = None
            closing = asyncio.ensure_future(channel.close(grace=RETIRED_CHANNEL_GRACE_S))
            self._retiring.add(closing)
            closing.add_done_callback(self._retiring.discard)

    async def aclose(self) -> None:
        channels = [channel for channel in (self._control, *self._data) if channel is not None]
        retiring = list(self._retiring)
        same_loop = self._loop is asyncio.get_running_loop()
        self._control, self._data, self._infer, self._retiring, self._loop = None, [], [], set(), None
        if same_loop:
            await asyncio.gather(
                *(channel.close() for channel in channels), *retiring, return_exceptions=True
            )

    def _stub(self, channel: grpc.aio.Channel) -> Any:
        from warmgate.grpcapi.open_inference_grpc_pb2_grpc import GRPCInferenceServiceStub

        return GRPCInferenceServiceStub(channel)

    async def _call(self, channel: grpc.aio.Channel, call: Callable[[], Awaitable[T]]) -> T | BaseException:
        """One control RPC on `channel`; its error as a value instead of raised (a status code
        to read, a reason to word). Any failure counts: an answer that does not decode, a
        channel that cannot open."""
        import grpc

        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._retire(channel)
            return exc
        except Exception as exc:
            return exc

    def _reason(self, rpc: str, outcome: BaseException) -> str:
        return f"{self.server.url} {rpc}: {describe_rpc_error(outcome, secure=self.secure)}"

    async def send(
        self,
        session: aiohttp.ClientSession,
        request: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], float] = time.monotonic,
    ) -> Result:
        """One ModelInfer with pre-serialised bytes; never raises for a server-side failure.
        Failures map to the HTTP kinds where the engine acts on them (`connection` makes it ask
        whether the server died, `timeout` reads as a timeout), else to `grpc_<code>`."""
        import grpc

        infer = self._next_infer()
        start = clock()
        try:
            body = await infer(request.body or b"", timeout=timeout.total)
        except grpc.aio.AioRpcError as exc:
            return self._failed(clock() - start, exc, request, timeout)
        except Exception as exc:  # not an RPC status (a usage error): still a failed request
            return Result(
                clock() - start,
                CONNECTION,
                message=f"{request.url}: {type(exc).__name__}: {one_line(str(exc))}",
                request=request,
            )
        return Result(clock() - start, "", body=body, request=request)

    def _failed(
        self,
        latency: float,
        exc: grpc.aio.AioRpcError,
        request: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
    ) -> Result:
        import grpc

        code = exc.code()
        details = describe_rpc_error(exc, secure=self.secure)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout.total is not None:
            message = f"no response within {timeout.total:g}s (server.request_timeout_s) from {request.url}"
            return Result(latency, TIMEOUT, message=message, request=request)
        if code == grpc.StatusCode.UNAVAILABLE:
            return Result(latency, CONNECTION, message=f"{request.url}: {details}", request=request)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"vs. {MAX_ANSWER_BYTES})" in (exc.details() or ""):
            # Our own receive limit, not the server's: the answer is over the cap on an answer.
            message = (
                f"answer is over the {MAX_ANSWER_BYTES // (1 << 20)} MiB cap on an answer from {request.url}"
            )
            return Result(latency, INVALID, message=message, request=request)
        kind = f"grpc_{code.name.lower()}" if code is not None else "grpc_unknown"
        return Result(latency, kind, message=f"gRPC {details} from {request.url}", request=request)

    # ---- health ------------------------------------------------------------------------------

    @property
    def model_label(self) -> str:
        version = f", version {self.server.model_version}" if self.server.model_version else ""
        return f"{self.server.model}{version}"

    @property
    def health_url(self) -> str:
        service = self.server.grpc_health_service
        if service is not None:
            return f"{self.server.url} ({HEALTH_CHECK} {service!r})"
        return f"{self.server.url} (ServerReady, ModelReady {self.model_label})"

    async def check_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb

        if self.server.grpc_health_service is not None:
            return await self._health_service(timeout_s)
        channel = self._control_channel()
        stub = self._stub(channel)
        model = pb.ModelReadyRequest(name=self.server.model, version=self.server.model_version or "")
        server_ready, model_ready = await asyncio.gather(
            self._call(channel, lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s)),
            self._call(channel, lambda: stub.ModelReady(model, timeout=timeout_s)),
        )
        for rpc, outcome in (("ServerReady", server_ready), (f"ModelReady({self.model_label})", model_ready)):
            if isinstance(outcome, BaseException):
                return self._reason(rpc, outcome)
            if not outcome.ready:
                return f"{self.server.url} {rpc}: not ready"
        return None

    async def _health_service(self, timeout_s: float) -> str | None:
        from grpc_health.v1 import health_pb2

        service = self.server.grpc_health_service or ""
        channel = self._control_channel()
        check = channel.unary_unary(
            f"/{HEALTH_CHECK}",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        request = health_pb2.HealthCheckRequest(service=service)
        answer = await self._call(channel, lambda: check(request, timeout=timeout_s))
        rpc = f"{HEALTH_CHECK}({service!r})"
        if isinstance(answer, BaseException):
            return self._reason(rpc, answer)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            return f"{self.server.url} {rpc}: {status}"
        return None

    async def check_live(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb

        channel = self._control_channel()
        stub = self._stub(channel)
        answer = await self._call(channel, lambda: stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout_s))
        if isinstance(answer, BaseException):
            return self._reason("ServerLive", answer)
        return None if answer.live else f"{self.server.url} ServerLive: not live"

    async def unknown_model(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """The server is ready and ModelReady (or, when that only says "not ready",
        ModelMetadata) answers NOT_FOUND or details that say the model is unknown. A model that
        is loading answers "not ready" or UNAVAILABLE (Triton), which is None: keep waiting."""
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb

        channel = self._control_channel()
        stub = self._stub(channel)
        model, version = self.server.model, self.server.model_version or ""
        ready_request = pb.ModelReadyRequest(name=model, version=version)
        server_ready, model_ready = await asyncio.gather(
            self._call(channel, lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s)),
            self._call(channel, lambda: stub.ModelReady(ready_request, timeout=timeout_s)),
        )
        if isinstance(server_ready, BaseException) or not server_ready.ready:
            return None
        rpc, outcome = f"ModelReady({self.model_label})", model_ready
        if not isinstance(outcome, BaseException):
            if outcome.ready:
                return None
            request = pb.ModelMetadataRequest(name=model, version=version)
            rpc, outcome = (
                f"ModelMetadata({self.model_label})",
                await self._call(channel, lambda: stub.ModelMetadata(request, timeout=timeout_s)),
            )
        if not isinstance(outcome, BaseException) or not _says_unknown_model(outcome):
            return None
        return f"server.model {self.server.model!r} is not served: {self._reason(rpc, outcome)}"

    # ---- requests and answers ----------------------------------------------------------------

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb
        from warmgate.tensors import to_raw

        request = pb.ModelInferRequest(
            model_name=self.server.model, model_version=self.server.model_version or ""
        )
        for tensor in tensors:
            try:
                raw = to_raw(tensor.datatype, tensor.array)
            except (KeyError, ValueError, TypeError) as exc:
                raise EncodeError(
                    f"input {tensor.name}: cannot encode {tensor.datatype} as raw contents: {exc}"
                ) from None
            request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape))
            request.raw_input_contents.append(raw)
        return PreparedRequest(
            "gRPC",
            self.server.url + INFER_PATH,
            request.SerializeToString(),
            headers=GRPC_HEADERS,
            batch_size=batch_size,
        )

    def parse(self, body: bytes) -> Outputs:
        return parse_infer_response(body)

    async def discover_shapes(
        self, session: aiohttp.ClientSession, auto: AutoShapes, timeout_s: float
    ) -> list[Shape]:
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb

        channel = self._control_channel()
        stub = self._stub(channel)
        request = pb.ModelMetadataRequest(name=self.server.model, version=self.server.model_version or "")
        where = f"{self.server.url} ModelMetadata({self.model_label})"
        answer = await self._call(channel, lambda: stub.ModelMetadata(request, timeout=timeout_s))
        if isinstance(answer, BaseException):
            raise MetadataError(f"{where}: {describe_rpc_error(answer, secure=self.secure)}")
        metadata = {
            "name": answer.name,
            "platform": answer.platform,
            "inputs": [
                {"name": each.name, "datatype": each.datatype, "shape": list(each.shape)}
                for each in answer.inputs
            ],
        }
        try:
            return shapes_from_metadata(metadata, auto, where)
        except MetadataError as exc:
            # Its wording names an HTTP GET; here the source is the RPC.
            raise MetadataError(str(exc).removeprefix("GET ")) from None


def _says_unknown_model(outcome: BaseException) -> bool:
    import grpc

    if not isinstance(outcome, grpc.aio.AioRpcError):
        return False
    code = outcome.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return True
    # A loading model (Triton: UNAVAILABLE) or a server that did not answer in time is not unknown.
    transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    return code not in transient and bool(UNKNOWN_MODEL_DETAILS.search(outcome.details() or ""))
