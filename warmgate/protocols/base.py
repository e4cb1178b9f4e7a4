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
  response decoding (`parse`, raising `InvalidResponse` when a 2xx body is not an answer).

Sending, timing and classifying failures are the same for every HTTP protocol and live here.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from warmgate.config import AutoShapes, ServerConfig, Shape
from warmgate.protocols.health import Endpoint, check_endpoints, describe_client_error, excerpt

if TYPE_CHECKING:
    # Annotations only: importing the registry must not load numpy (it runs before the server spawns).
    from warmgate.tensors import Tensor

JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class PreparedRequest:
    method: str
    url: str
    body: bytes | None
    headers: Mapping[str, str] = field(default_factory=lambda: JSON_HEADERS)

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else 0

    def describe(self) -> str:
        return f"{self.method} {self.url}"


@dataclass(frozen=True)
class OutputTensor:
    """One output, flattened row-major. `datatype` is None when the protocol does not say."""

    name: str
    data: list[Any]
    shape: tuple[int, ...] | None = None
    datatype: str | None = None


Outputs = dict[str, OutputTensor]


class InvalidResponse(Exception):
    """A 2xx response that is not an inference answer (no outputs, an error field, not JSON)."""


class MetadataError(Exception):
    """The model's metadata cannot be read or lists nothing to build inputs from."""


class EncodeError(Exception):
    """A shape this protocol cannot carry (e.g. a request template naming an input the shape lacks)."""


class Adapter(ABC):
    """Everything one protocol needs: config rules, health, metadata, encoding and decoding.

    Transport: HTTP protocols use the aiohttp session they are given. A protocol that does not
    speak HTTP (gRPC) overrides `check_ready`, `check_live` and `discover_shapes` and ignores the
    session.
    """

    # The value of server.protocol; empty on abstract bases, which the registry skips.
    name: ClassVar[str] = ""

    def __init__(self, server: ServerConfig) -> None:
        self.server = server

    # ---- config rules (called by config validation through the registry) ---------------------

    @classmethod
    def check_server(cls, server: ServerConfig) -> None:
        """Raise ValueError (one line, naming the server.* fields) when `server` cannot work."""
        return  # the common fields are enough for most protocols

    @classmethod
    def supports_auto_shapes(cls) -> bool:
        """Whether the server publishes model metadata that `shapes: auto` can read."""
        return cls.discover_shapes is not Adapter.discover_shapes

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
        """The outputs of a 2xx answer; raises InvalidResponse when there are none."""

    async def discover_shapes(
        self, session: aiohttp.ClientSession, auto: AutoShapes, timeout_s: float
    ) -> list[Shape]:
        """`shapes: auto`: one shape per configured batch size, from the model's metadata."""
        raise MetadataError(f"shapes: auto is not supported for protocol {self.name}")


# ---- sending ---------------------------------------------------------------------------------

# Failure kinds, as reported in the load test's error counts (besides http_<status>).
TIMEOUT = "timeout"
CONNECTION = "connection"
INVALID = "invalid_response"


@dataclass(frozen=True)
class Result:
    """The outcome of one request. `kind` is "" on success."""

    latency_s: float
    kind: str = ""
    status: int | None = None
    body: bytes = b""
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.kind


async def send(
    session: aiohttp.ClientSession,
    request: PreparedRequest,
    timeout: aiohttp.ClientTimeout,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Send once; never raises for a server-side failure (only for cancellation)."""
    start = clock()
    try:
        async with session.request(
            request.method, request.url, data=request.body, headers=request.headers, timeout=timeout
        ) as response:
            body = await response.read()
            status = response.status
    except asyncio.TimeoutError:
        return Result(
            clock() - start,
            TIMEOUT,
            message=f"no response within {timeout.total:g}s (server.request_timeout_s) "
            f"from {request.describe()}",
        )
    except aiohttp.ClientError as exc:
        return Result(
            clock() - start, CONNECTION, message=f"{request.describe()}: {describe_client_error(exc)}"
        )
    latency = clock() - start
    if not 200 <= status < 300:
        return Result(
            latency,
            f"http_{status}",
            status,
            body,
            f"HTTP {status} from {request.describe()}: {excerpt(body) or '(empty body)'}",
        )
    return Result(latency, "", status, body)


def validate(adapter: Adapter, result: Result) -> tuple[Result, Outputs | None]:
    """Check a successful result's body with the adapter; turn a bad body into a failure."""
    if not result.ok:
        return result, None
    try:
        outputs = adapter.parse(result.body)
    except InvalidResponse as exc:
        failed = Result(
            result.latency_s, INVALID, result.status, result.body, f"{exc}: {excerpt(result.body)}"
        )
        return failed, None
    return result, outputs


# ---- helpers shared by the adapters ----------------------------------------------------------


def dumps(document: Any) -> bytes:
    # Compact separators: the body is built once but sent thousands of times.
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def loads_object(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidResponse("response is not JSON") from None


def loads_result(body: bytes) -> dict[str, Any]:
    """An inference response that must be a JSON object without an `error` (OIP, TF Serving)."""
    document = loads_object(body)
    if not isinstance(document, dict):
        raise InvalidResponse("response is not a JSON object")
    if document.get("error"):
        raise InvalidResponse(f"response carries an error: {excerpt(str(document['error']).encode())}")
    return document


def flatten(value: Any) -> tuple[list[Any], tuple[int, ...] | None]:
    """Nested lists -> (flat values, shape); the shape is None when the nesting is ragged."""
    if not isinstance(value, list):
        return [value], ()
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list[Any] = []
    regular = _flatten_into(value, 0, shape, flat)
    return flat, (tuple(shape) if regular else None)


def _flatten_into(value: Any, depth: int, shape: list[int], out: list[Any]) -> bool:
    if not isinstance(value, list):
        out.append(value)
        return depth == len(shape)
    regular = depth < len(shape) and len(value) == shape[depth]
    for item in value:
        regular = _flatten_into(item, depth + 1, shape, out) and regular
    return regular


def json_outputs(document: Any, prefix: str = "") -> Outputs:
    """Every leaf array of a JSON document as an output named by its dotted path."""
    outputs: Outputs = {}
    if isinstance(document, dict):
        for key, value in document.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            outputs.update(json_outputs(value, name))
        return outputs
    if isinstance(document, list) and document and all(isinstance(item, dict) for item in document):
        for index, item in enumerate(document):
            outputs.update(json_outputs(item, f"{prefix}.{index}" if prefix else str(index)))
        return outputs
    data, shape = flatten(document)
    name = prefix or "output"
    outputs[name] = OutputTensor(name=name, data=data, shape=shape)
    return outputs
