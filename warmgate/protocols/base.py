"""The interface every model-server protocol implements, and sending one request.

A protocol is one module under warmgate/protocols/ defining one `Adapter` subclass with a `name`
(the value of `server.protocol`); registry.py finds it, so config validation, the JSON schema,
`warmgate check`, the entrypoint's health wait and the probe's server check all know it. The
adapter owns everything protocol-specific:

- its config rules (`check_server`) and whether it supports `shapes: auto`;
- readiness and liveness (`check_ready` / `check_live`; HTTP protocols just name their endpoints,
  with a body check where a 200 can still mean "not ready");
- model metadata -> shapes (`discover_shapes`);
- request encoding (`build`: method, URL, headers and body bytes, built once per shape) and
  response decoding (`parse`, raising `InvalidResponse` when a 2xx body is not an answer). An
  answer whose framing travels in a response header (OIP's binary tensors: the JSON header's
  length) names that header in `answer_headers`; `send` keeps it on the `Result`, and the adapter
  decodes with it in `parse_answer`.

Sending, timing and classifying failures are the same for every HTTP protocol and live here.
Answers are untrusted: they are read with a size cap and decoded with the bounded helpers of
answers.py, and `Adapter.decode` turns anything a decoder still raises into `InvalidResponse`, so
a malformed answer is a failed request, never an exception that ends the run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from warmgate.config import AutoShapes, ServerConfig, Shape
from warmgate.protocols._http1 import Answer, Http1Client, Http1Error, Wire, serialise
from warmgate.protocols.answers import (
    MAX_ANSWER_BYTES,
    InvalidResponse,
    Outputs,
    check_batch,
    excerpt,
    read_capped,
)
from warmgate.protocols.failures import CONNECTION, INVALID, TIMEOUT
from warmgate.protocols.health import check_endpoints, describe_client_error
from warmgate.protocols.readiness import Endpoint

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

log = logging.getLogger(__name__)

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
# The answer headers of a protocol that decodes from the body alone (shared, read-only).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
# server.* fields that only some protocols read (each adapter lists its own in `server_options`).
PROTOCOL_OPTIONS = frozenset({"http", "binary_tensors", "grpc_health_service", "openai"})
# A server that names the worker process answering (warmgate serve does) lets the diagnosis tell
# per-worker initialisation from a global one; kept on `Result.headers` when present.
WORKER_HEADER = "x-warmgate-worker"


@dataclass(frozen=True)
class PreparedRequest:
    method: str
    url: str
    body: bytes | None
    headers: Mapping[str, str] = field(default_factory=lambda: JSON_HEADERS)
    # The shape's batch size (0: no batch dimension), which the answer's outputs must lead with
    # where the protocol says so (`Adapter.answers_lead_with_batch`).
    batch_size: int = 0

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else 0

    @cached_property
    def wire(self) -> Wire | None:
        """The bytes the lean HTTP/1.1 client sends for this request, serialised on first use and
        kept (the request is sent thousands of times); None where aiohttp sends it (_http1.py)."""
        return serialise(self.method, self.url, self.headers, self.body)

    def describe(self) -> str:
        return f"{self.method} {self.url}"


class MetadataError(Exception):
    """The model's metadata cannot be read or lists nothing to build inputs from."""


class EncodeError(Exception):
    """A shape this protocol cannot carry (e.g. a request template naming an input the shape lacks)."""


class Adapter(ABC):
    """Everything one protocol needs: config rules, health, metadata, encoding and decoding.

    Transport: HTTP protocols use the aiohttp session they are given. A protocol that does not
    speak HTTP (oip-grpc) owns its transport: it overrides `send`, `check_ready`, `check_live`,
    `unknown_model`, `discover_shapes` and `aclose`, and ignores the session.
    """

    # The value of server.protocol; empty on abstract bases, which the registry skips.
    name: ClassVar[str] = ""
    # Whether every output of a batched request leads with its batch size (OIP, TF Serving);
    # not for protocols whose answers are the handler's own JSON (TorchServe, http).
    answers_lead_with_batch: ClassVar[bool] = False
    # The schemes server.url may have: how this protocol's transport connects.
    url_schemes: ClassVar[tuple[str, ...]] = ("http", "https")
    # The protocol-specific server.* options (PROTOCOL_OPTIONS) this protocol reads: setting one
    # it does not read is a config error, not a silently ignored line.
    server_options: ClassVar[frozenset[str]] = frozenset()
    # Response headers the decoder needs besides the body (kept on `Result.headers` by `send`,
    # under these spellings): only those, since every answer pays for each one kept.
    answer_headers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, server: ServerConfig) -> None:
        self.server = server
        # The timed requests' keep-alive connections (_http1.py), opened on the first send.
        self._http1: Http1Client | None = None

    # ---- config rules (called by config validation through the registry) ---------------------

    @classmethod
    def check_server(cls, server: ServerConfig) -> None:
        """Raise ValueError (one line, naming the server.* fields) when `server` cannot work.
        Overrides add their own rules after calling this one."""
        scheme = server.url.partition("://")[0]
        if scheme not in cls.url_schemes:
            wanted = " or ".join(f"{each}://" for each in cls.url_schemes)
            raise ValueError(f"url must start with {wanted} for protocol {cls.name}, got {server.url}")
        for option in sorted(PROTOCOL_OPTIONS - cls.server_options):
            if getattr(server, option) not in (None, False):
                raise ValueError(f"{option} is not used by protocol {cls.name}; remove it")

    @classmethod
    def supports_auto_shapes(cls) -> bool:
        """Whether the server publishes model metadata that `shapes: auto` can read."""
        return cls.discover_shapes is not Adapter.discover_shapes

    @classmethod
    def takes_prompts(cls) -> bool:
        """Whether this protocol's shapes are prompts (`shapes[].prompt`, an LLM server) rather
        than tensors; config validation refuses shapes of the other kind."""
        return False

    # ---- health ------------------------------------------------------------------------------

    def readiness_endpoints(self) -> list[Endpoint]:
        """Every endpoint that must answer 200 (and pass its body check) for ready."""
        if self.server.health_path is not None:
            return [Endpoint(self.server.url + self.server.health_path)]
        return self.default_readiness_endpoints()

    def default_readiness_endpoints(self) -> list[Endpoint]:
        # Protocols without standard health endpoints require server.health_path in check_server.
        raise ValueError(f"protocol {self.name} needs server.health_path")

    def liveness_endpoint(self) -> Endpoint:
        if self.server.live_path is not None:
            return Endpoint(self.server.url + self.server.live_path)
        return self.default_liveness_endpoint()

    def default_liveness_endpoint(self) -> Endpoint:
        return self.readiness_endpoints()[0]

    @property
    def health_url(self) -> str:
        """What the status file and the log name as the server's health check."""
        return self.readiness_endpoints()[0].url

    async def check_ready(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """None when the server and its model can serve, else a one-line reason."""
        return await check_endpoints(session, self.readiness_endpoints(), timeout_s)

    async def check_live(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """None while the server process is alive and answering, else a one-line reason."""
        return await check_endpoints(session, [self.liveness_endpoint()], timeout_s)

    async def unknown_model(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        """Asked while readiness fails: a one-line reason (naming the models the server does serve,
        where it says) when the server is up and says it does not serve the configured model at
        all, else None. None also when the protocol cannot tell, which keeps the plain wait."""
        return None

    # ---- transport ---------------------------------------------------------------------------

    async def send(
        self,
        session: aiohttp.ClientSession,
        request: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], float] = time.monotonic,
    ) -> Result:
        """Send one request and time it; never raises for a server-side failure. HTTP here: plain
        http:// over the adapter's lean HTTP/1.1 connections, anything else over the caller's
        session; a protocol with its own transport (gRPC) overrides this."""
        wire = request.wire
        if wire is None:
            return await send(session, request, timeout, clock, keep_headers=self.kept_headers)
        if self._http1 is None:
            self._http1 = Http1Client(keep_headers=self.kept_headers, max_body_bytes=MAX_ANSWER_BYTES)
        return await send_wire(self._http1, wire, request, timeout, clock)

    @cached_property
    def kept_headers(self) -> tuple[str, ...]:
        """The answer headers `send` keeps: the decoder's and the worker's name."""
        return (*self.answer_headers, WORKER_HEADER)

    async def aclose(self) -> None:
        """Release what the transport holds (the lean HTTP/1.1 connections, a gRPC channel); the
        aiohttp session is the caller's."""
        if self._http1 is not None:
            await self._http1.close()
            self._http1 = None

    # ---- requests and answers ----------------------------------------------------------------

    @property
    def comparable(self) -> bool:
        """Whether answers carry outputs that the concurrency check can compare."""
        return True

    @abstractmethod
    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        """The request carrying these inputs; called once per shape (and per check variant).
        Raises EncodeError when this protocol cannot carry the shape."""

    @abstractmethod
    def parse(self, body: bytes) -> Outputs:
        """The outputs of a 2xx answer; raises InvalidResponse when there are none or they are
        malformed. The body is untrusted: decode it with answers.py's bounded helpers."""

    def parse_answer(self, body: bytes, headers: Mapping[str, str]) -> Outputs:
        """`parse` for a protocol whose answers also need response headers (`answer_headers`,
        as `send` kept them; untrusted like the body). Protocols that decode from the body alone
        keep this default."""
        return self.parse(body)

    def describe_answer(self, body: bytes, headers: Mapping[str, str]) -> str:
        """A one-line excerpt of an answer, for a failed request's reason."""
        return excerpt(body)

    def decode(self, body: bytes, batch_size: int = 0, headers: Mapping[str, str] = NO_HEADERS) -> Outputs:
        """`parse_answer`, then the batch check, for one answer to a request of `batch_size`.
        Raises only InvalidResponse: anything else a decoder raises is a malformed answer it
        missed (logged with its traceback at debug level), not a reason to end the run."""
        try:
            outputs = self.parse_answer(body, headers)
        except InvalidResponse:
            raise
        except (ArithmeticError, LookupError, RecursionError, TypeError, ValueError, AttributeError) as exc:
            log.debug("protocol %s could not decode an answer", self.name, exc_info=True)
            raise InvalidResponse(f"answer cannot be decoded ({type(exc).__name__}: {exc})"[:200]) from None
        if self.answers_lead_with_batch and batch_size > 0:
            check_batch(outputs, batch_size)
        return outputs

    async def discover_shapes(
        self, session: aiohttp.ClientSession, auto: AutoShapes, timeout_s: float
    ) -> list[Shape]:
        """`shapes: auto`: one shape per configured batch size, from the model's metadata."""
        raise MetadataError(f"shapes: auto is not supported for protocol {self.name}")


# ---- sending ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """What one LLM completion measured (prompt shapes). A non-streamed answer's first token
    arrives with its last: its `ttft_s` is the request's latency and it has no gaps."""

    # From sending to the first content token.
    ttft_s: float
    # Seconds between consecutive content events of a stream: the inter-token latency samples.
    gaps_s: Sequence[float] = ()
    # usage.completion_tokens where the server sent usage, else the content events counted;
    # None for a non-streamed answer without usage.
    output_tokens: int | None = None
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class Result:
    """The outcome of one request. `kind` is "" on success."""

    latency_s: float
    kind: str = ""
    status: int | None = None
    body: bytes = b""
    message: str = ""
    # What was sent (its batch size is what the answer is checked against).
    request: PreparedRequest | None = None
    # The response headers the adapter decodes with (`Adapter.answer_headers`) that the answer had.
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    # What an LLM completion measured (time to first token, token gaps); None for tensor protocols.
    generation: Generation | None = None

    @property
    def ok(self) -> bool:
        return not self.kind


CONTENT_ENCODING = "Content-Encoding"


async def send(
    session: aiohttp.ClientSession,
    request: PreparedRequest,
    timeout: aiohttp.ClientTimeout,
    clock: Callable[[], float] = time.monotonic,
    *,
    max_body_bytes: int = MAX_ANSWER_BYTES,
    keep_headers: Sequence[str] = (),
) -> Result:
    """Send once; never raises for a server-side failure (only for cancellation). The answer is
    read up to `max_body_bytes`: a larger one is an invalid response, not a memory hazard. The
    response headers named in `keep_headers` that the answer has are kept on the result."""
    start = clock()
    kept: Mapping[str, str] = NO_HEADERS
    try:
        async with session.request(
            request.method, request.url, data=request.body, headers=request.headers, timeout=timeout
        ) as response:
            status = response.status
            if keep_headers:
                kept = {name: response.headers[name] for name in keep_headers if name in response.headers}
            declared = response.content_length
            if (
                declared is not None
                and declared <= max_body_bytes
                and CONTENT_ENCODING not in response.headers
            ):
                # An uncompressed body of a declared length within the cap: the parser reads exactly
                # that many bytes, so one read replaces the chunk loop (the load test's hot path).
                # A compressed one goes through the loop: it may inflate past the cap.
                body = await response.read()
            else:
                body = await read_capped(response, max_body_bytes)
    except asyncio.TimeoutError:
        return timed_out(clock() - start, request, timeout)
    except aiohttp.ClientError as exc:
        return Result(
            clock() - start,
            CONNECTION,
            message=f"{request.describe()}: {describe_client_error(exc)}",
            request=request,
        )
    except InvalidResponse as exc:  # over the size cap
        return Result(
            clock() - start, INVALID, status, message=f"{exc} from {request.describe()}", request=request
        )
    return answered(clock() - start, status, body, request, kept)


async def send_wire(
    client: Http1Client,
    wire: Wire,
    request: PreparedRequest,
    timeout: aiohttp.ClientTimeout,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """`send` over the lean HTTP/1.1 client (the answer headers it keeps are the client's)."""
    start = clock()
    try:
        answer, start = await client.request(wire, timeout.total, clock)
    except asyncio.TimeoutError:
        return timed_out(clock() - start, request, timeout)
    except Http1Error as exc:
        return Result(clock() - start, CONNECTION, message=f"{request.describe()}: {exc}", request=request)
    except InvalidResponse as exc:
        return Result(clock() - start, INVALID, message=f"{exc} from {request.describe()}", request=request)
    return answered(clock() - start, answer.status, answer.body, request, answer.headers, answer=answer)


def timed_out(latency: float, request: PreparedRequest, timeout: aiohttp.ClientTimeout) -> Result:
    return Result(
        latency,
        TIMEOUT,
        message=f"no response within {timeout.total:g}s (server.request_timeout_s) from {request.describe()}",
    )


def answered(
    latency: float,
    status: int,
    body: bytes,
    request: PreparedRequest,
    headers: Mapping[str, str],
    *,
    answer: Answer | None = None,
) -> Result:
    """A complete answer: a success when 2xx, else a failure named by its status."""
    if 200 <= status < 300:
        return Result(latency, "", status, body, request=request, headers=headers)
    message = f"HTTP {status} from {request.describe()}: {excerpt(body) or '(empty body)'}"
    if answer is not None and answer.location is not None and 300 <= status < 400:
        # The lean client does not follow redirects: the timed requests must reach the server
        # itself, as one round trip, like the traffic the gate stands in for.
        message = (
            f"HTTP {status} from {request.describe()}: redirects to {excerpt(answer.location.encode())}; "
            "warmgate does not follow redirects: set server.url (or the path) to where it points"
        )
    return Result(latency, f"http_{status}", status, body, message, request)


def validate(adapter: Adapter, result: Result) -> tuple[Result, Outputs | None]:
    """Check a successful result's body with the adapter (against the batch size of the request
    it answers); turn a bad body into a failure."""
    if not result.ok:
        return result, None
    batch_size = result.request.batch_size if result.request is not None else 0
    try:
        outputs = adapter.decode(result.body, batch_size, result.headers)
    except InvalidResponse as exc:
        failed = Result(
            result.latency_s,
            INVALID,
            result.status,
            result.body,
            f"{exc}: {adapter.describe_answer(result.body, result.headers)}",
            result.request,
            result.headers,
        )
        return failed, None
    return result, outputs


# ---- helpers shared by the adapters ----------------------------------------------------------


def dumps(document: Any) -> bytes:
    # Compact separators: the body is built once but sent thousands of times.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
