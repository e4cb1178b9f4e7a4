"""The probe's HTTP/1.1 server: asyncio.Protocol and llhttp's parser (httptools), nothing more.

Why not aiohttp's server: importing it costs the sidecar about 16 MiB of its memory, in every pod
of the deployment, to answer a handful of GET routes. What the probe needs is small: keep-alive,
requests on one connection answered in order (pipelining), GET and HEAD, a JSON or text body
with its length, and the guards of http_guard.py against clients on the pod network:

- a connection is closed `idle_timeout_s` after it opened and after each answer, unless a request
  is being answered; bytes arriving do not extend it, so a slow request head is cut off too;
- at the connection cap the oldest connection is closed to admit the new one;
- the request line, each header and the header count are bounded (400/431 and close); a body is
  not expected and not kept: over `MAX_BODY_BYTES` it is refused (413 and close);
- a refused request or a handler's error logs one line through the rate-limited logger.

Importing this module must not import aiohttp (tests/probe/test_http_server.py checks it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

from warmgate.probe.http_guard import HttpLimits

# GET and HEAD carry no body; a client that sends one anyway gets this much read (and dropped).
MAX_BODY_BYTES = 64 << 10
# Complete requests a connection may queue before its reading pauses until they are answered:
# pipelining is served, but a client cannot make the sidecar queue requests without bound.
MAX_QUEUED_REQUESTS = 8
# How long closing the server waits for the requests in flight: the sidecar's /drain hook holds
# its answer for the drain's quiet period, and the hook must see it (aiohttp's default, kept; the
# pod's termination grace period bounds it anyway).
SHUTDOWN_GRACE_S = 60.0
ALLOWED_METHODS = ("GET", "HEAD")
_ALLOW = ", ".join(ALLOWED_METHODS)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    # Names lower-cased; a repeated header's values joined with ", " (RFC 9110 5.3).
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, document: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, json.dumps(document).encode(), "application/json; charset=utf-8", headers)


Handler = Callable[[Request], Awaitable[Response]]
# Called once per answered request that reached routing: path, status, seconds taken.
Observer = Callable[[str, int, float], None]


class BadRequest(Exception):
    """A request refused before any handler saw it; answered with `status`, then the connection
    is closed (what follows on it cannot be parsed reliably)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}, {reason}")
        self.status = status


@dataclass
class _Pending:
    method: str
    url: bytes
    headers: dict[str, str]
    http_version: str
    keep_alive: bool
    refusal: BadRequest | None = None


@dataclass
class _Head:
    """The request being parsed."""

    url: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    header_count: int = 0
    body_bytes: int = 0


class HttpServer:
    """Serves `routes` (path -> handler, GET and HEAD) on one listening socket."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        limits: HttpLimits,
        logger: logging.Logger,
        *,
        observe: Observer | None = None,
        max_connections: int | None = None,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self.routes = dict(routes)
        self.limits = limits
        self.logger = logger
        self.observe = observe
        self.max_connections = limits.connection_cap() if max_connections is None else max_connections
        self.evicted = 0
        self._on_evict = on_evict
        # Insertion-ordered: the first entry is the oldest open connection.
        self._connections: dict[_Connection, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        # The request head is bounded as a whole too: llhttp buffers a header name or value
        # until it is complete, so the per-field check alone would come after the bytes arrived.
        self.max_head_bytes = limits.max_line_size + limits.max_headers * (2 * limits.max_field_size + 4) + 4

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listens; returns the bound addresses. Raises OSError when it cannot."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._admit, host, port, backlog=self.limits.backlog, reuse_address=True
        )
        return [(str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in self._server.sockets]

    async def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stops listening, closes idle connections, lets the requests in flight (and those
        already queued behind them) be answered for up to `grace_s`, then closes the rest."""
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.finish()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for connection in list(self._connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _admit(self) -> _Connection:
        # A kubelet probe lives for milliseconds, so the oldest connections are the idle or slow
        # ones; refusing the new connection instead would refuse the kubelet first.
        while len(self._connections) >= self.max_connections:
            oldest = next(iter(self._connections))
            oldest.close()
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(self.evicted)
        # Counted from here, not from connection_made: asyncio accepts a burst of connections
        # before any of them is made, and each must see the others against the cap.
        connection = _Connection(self)
        self._connections[connection] = None
        return connection

    def _forget(self, connection: _Connection) -> None:
        self._connections.pop(connection, None)

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def log_error(self, peer: str, exc: BaseException) -> None:
        # One line (http_guard.HttpErrorLog shortens and rate-limits it; traceback only at debug).
        self.logger.error("Error handling request from %s", peer, exc_info=exc)


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self._parser = httptools.HttpRequestParser(self)
        self._head = _Head()
        self._head_bytes = 0
        self._in_head = True
        self._queue: deque[_Pending] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._reading_paused = False
        self._stopped_parsing = False
        self._refusal: BadRequest | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    # ---- transport events ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._closed:  # evicted by a newer connection before its own start
            transport.close()
            return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = str(peer[0])
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server._forget(self)
        self._disarm_idle()
        self._writable.set()  # a worker waiting to write sees the transport gone and stops

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        if self._stopped_parsing or self.transport is None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._head_bytes > self.server.max_head_bytes:
                raise BadRequest(431, "request head too large")
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here: answer what was asked, then close.
            self._stop_parsing(None)
        except (httptools.HttpParserError, BadRequest) as exc:
            refusal = self._refusal or (exc if isinstance(exc, BadRequest) else None)
            self.server.log_error(self.peer, refusal or exc)
            self._stop_parsing(refusal or BadRequest(400, str(exc) or "bad request"))
        if len(self._queue) >= MAX_QUEUED_REQUESTS and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._start_worker()

    def eof_received(self) -> bool | None:
        # A client that half-closes after its requests still gets the answers; then we close.
        self._stopped_parsing = True
        if not self._queue and self._worker is None:
            self.close()
        return True

    # ---- parser callbacks (httptools) ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head = _Head()

    def on_url(self, url: bytes) -> None:
        self._head.url += url
        if len(self._head.url) > self.limits.max_line_size:
            self._refuse(BadRequest(400, f"request target longer than {self.limits.max_line_size} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head
        head.header_count += 1
        if head.header_count > self.limits.max_headers:
            self._refuse(BadRequest(431, f"more than {self.limits.max_headers} headers"))
        if len(name) > self.limits.max_field_size or len(value) > self.limits.max_field_size:
            self._refuse(BadRequest(431, f"a header longer than {self.limits.max_field_size} bytes"))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        head.headers[key] = f"{head.headers[key]}, {text}" if key in head.headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False
        length = self._head.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._refuse(BadRequest(413, f"a body of {length} bytes"))

    def on_body(self, body: bytes) -> None:
        self._head.body_bytes += len(body)
        if self._head.body_bytes > MAX_BODY_BYTES:
            self._refuse(BadRequest(413, f"a body over {MAX_BODY_BYTES} bytes"))

    def on_message_complete(self) -> None:
        parser = self._parser
        self._queue.append(
            _Pending(
                method=parser.get_method().decode("ascii", "replace"),
                url=bytes(self._head.url),
                headers=self._head.headers,
                http_version=parser.get_http_version(),
                keep_alive=parser.should_keep_alive(),
            )
        )
        self._in_head = True
        self._head_bytes = 0

    def _refuse(self, refusal: BadRequest) -> None:
        # Raised inside a parser callback, llhttp stops and feed_data raises its own error.
        self._refusal = refusal
        raise refusal

    # ---- answering ----------------------------------------------------------------------------

    def _stop_parsing(self, refusal: BadRequest | None) -> None:
        self._stopped_parsing = True
        if refusal is not None:
            self._queue.append(_Pending("", b"", {}, "1.1", keep_alive=False, refusal=refusal))
        elif self._queue:
            self._queue[-1].keep_alive = False
        else:
            self.close()

    def _start_worker(self) -> None:
        if self._queue and self._worker is None and self.transport is not None:
            self._disarm_idle()
            self._worker = self.server._spawn(self._answer_queue())

    async def _answer_queue(self) -> None:
        try:
            while self._queue and self.transport is not None:
                pending = self._queue.popleft()
                if self._reading_paused and len(self._queue) < MAX_QUEUED_REQUESTS // 2:
                    self._reading_paused = False
                    self.transport.resume_reading()
                response = await self._respond(pending)
                await self._writable.wait()
                if self.transport is None:
                    return
                keep_alive = pending.keep_alive and not (self._stopped_parsing and not self._queue)
                self.transport.write(_serialise(response, pending, keep_alive))
                if not keep_alive:
                    self.close()
                    return
        finally:
            self._worker = None
        if self.transport is not None:
            self._arm_idle()
            # Requests parsed while the last answer was written (a pipelining client).
            self._start_worker()

    async def _respond(self, pending: _Pending) -> Response:
        if pending.refusal is not None:
            return _text(pending.refusal.status)
        target = pending.url.decode("latin-1")
        path, _, query = target.partition("?")
        started = time.perf_counter()
        status = 500
        try:
            if pending.method not in ALLOWED_METHODS:
                response = _text(405, headers=(("Allow", _ALLOW),))
            elif (handler := self.server.routes.get(path)) is None:
                response = _text(404)
            else:
                response = await handler(Request(pending.method, path, query, pending.headers))
            status = response.status
            return response
        except Exception as exc:
            self.server.log_error(self.peer, exc)
            return _text(500)
        finally:
            if self.server.observe is not None:
                self.server.observe(path, status, time.perf_counter() - started)

    # ---- timers and closing -------------------------------------------------------------------

    def _arm_idle(self) -> None:
        self._disarm_idle()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.limits.idle_timeout_s, self.close)

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def finish(self) -> None:
        """Close once the requests received so far are answered; at once when there are none."""
        self._stopped_parsing = True
        if self._worker is None:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._disarm_idle()
        self.server._forget(self)
        if self.transport is not None:
            self.transport.close()


def _text(status: int, *, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, f"{status}: {HTTPStatus(status).phrase}\n".encode(), headers=headers)


def _serialise(response: Response, pending: _Pending, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    elif pending.http_version == "1.0":
        lines.append("Connection: keep-alive")  # an HTTP/1.0 client closes unless told otherwise
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if pending.method == "HEAD" else head + response.body
