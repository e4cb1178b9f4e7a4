"""A lean HTTP/1.1 client for the requests the gate times: warmup, post-warm check and load test.

Why not the aiohttp session that health checks and metadata use: the load generator shares the
pod's CPUs with the server it measures, and on a trivial endpoint aiohttp's client spent about
45 µs of CPU per request (request and response objects, URL and header handling, several futures
and a stream reader each). Closed-loop requests alternate between generator and server, so the
generator's time per request is added to what the gate measures, and the generator capped the
rate at half of wrk's (docs/benchmarks.md, "load generator vs wrk"). Here a prepared request is
serialised to its bytes once (`Wire`), and a request costs one write, llhttp's parse of the
answer (httptools, the parser uvicorn uses) and one future.

Scope: plain `http://` URLs without credentials, which is what a server in the same pod is asked
over; anything else (https, user:password@, a URL that needs escaping, a header that cannot be
sent as is) returns no `Wire` and goes through aiohttp (`base.send`). The probe sidecar's server
checks also use this client, and there `serialise` is asked to carry https (the system's CA store,
as aiohttp's default) and credentials in the URL (Basic authorisation, as aiohttp sends them):
the probe's serving process loads no aiohttp (docs/probe.md, "Memory").

Kept from the aiohttp path: keep-alive connections, reused last-in first-out, as many as requests
in flight; `Accept-Encoding: gzip, deflate` with such answers inflated; the answer capped at
`max_body_bytes` (a larger one closes the connection); a total timeout per request, connecting
included. Different on purpose: redirects are not followed (the caller reports a 3xx with its
Location), and a request whose reused connection turns out closed by the server before any byte
of an answer (the keep-alive race: the server dropped an idle connection as we wrote) is sent
once more on a new connection, as browsers and urllib3 do.

The leading underscore marks a support module the protocol registry does not scan for adapters.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import string
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from warmgate.protocols.answers import InvalidResponse, over_cap

USER_AGENT = "warmgate"
ACCEPT_ENCODING = "gzip, deflate"
# Characters that may appear in a request target as sent; a URL with others (spaces, quotes,
# non-ASCII) needs escaping, which aiohttp's URL handling does.
_TARGET_CHARS = frozenset(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?%")
# Headers this client writes itself: a prepared request's own values for these are not sent twice.
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# How often the requests in flight are checked against their deadline (see Http1Client).
SWEEP_S = 0.05
_INFLATE_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class Http1Error(Exception):
    """No usable answer arrived over the connection (the caller's CONNECTION failure)."""


class ConnectFailed(Http1Error):
    def __init__(self, error: OSError) -> None:
        super().__init__(f"cannot connect ({error.strerror or error})")


class Disconnected(Http1Error):
    def __init__(self, *, answer_started: bool) -> None:
        super().__init__("server closed the connection")
        self.answer_started = answer_started


class MalformedAnswer(Http1Error):
    pass


@dataclass(frozen=True)
class Wire:
    """One prepared request as the bytes sent for it, and where to."""

    host: str
    port: int
    payload: bytes
    # https: the connection is TLS, the certificate checked against the system's CA store.
    tls: bool = False


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    # The answer headers the client was asked to keep, under the caller's spelling.
    headers: Mapping[str, str]
    # Where a 3xx points, for the caller's message.
    location: str | None = None


def serialise(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    https: bool = False,
    credentials: bool = False,
) -> Wire | None:
    """The request's bytes, or None when this client does not send it (see the module docstring).
    `https` and `credentials` let it carry https URLs and user:password@ in the URL."""
    schemes = {"http": 80, "https": 443} if https else {"http": 80}
    try:
        parts = urlsplit(url)
        default_port = schemes.get(parts.scheme)
        port = parts.port or default_port
    except ValueError:
        return None
    if default_port is None or port is None or not parts.hostname or parts.fragment:
        return None
    if parts.username is not None and not credentials:
        return None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not set(target) <= _TARGET_CHARS:
        return None
    # The Host header as aiohttp writes it: no credentials, and an explicit default port dropped.
    netloc = parts.netloc.rpartition("@")[2]
    host = netloc.rsplit(":", 1)[0] if parts.port == default_port else netloc
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    if parts.username is not None:
        userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        try:
            token = base64.b64encode(userinfo.encode("latin-1")).decode("ascii")
        except UnicodeEncodeError:
            return None  # aiohttp refuses these too
        lines.append(f"Authorization: Basic {token}")
    given = {name.lower() for name in headers}
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in given:
        lines.append("Accept: */*")
    if "accept-encoding" not in given:
        lines.append(f"Accept-Encoding: {ACCEPT_ENCODING}")
    for name, value in headers.items():
        if name.lower() in _OWN_HEADERS:
            continue
        if any(ch in "\r\n:" for ch in name) or "\r" in value or "\n" in value:
            return None  # aiohttp refuses these with its own error
        lines.append(f"{name}: {value}")
    if body is not None or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return Wire(parts.hostname, port, head + (body or b""), tls=parts.scheme == "https")


# Where a connection goes: host, port, and whether it is TLS.
_Address = tuple[str, int, bool]


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time. The parser callbacks never raise:
    they record, and the waiter learns the outcome."""

    def __init__(self, address: _Address, keep: Mapping[bytes, str], max_body_bytes: int) -> None:
        self.address = address
        self._keep = keep
        self._max_body_bytes = max_body_bytes
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset()

    def _reset(self) -> None:
        self._started = False
        self._headers_done = False
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._declared: int | None = None
        self._chunked = False
        self._encoding: str | None = None
        self._location: str | None = None
        self._error: Exception | None = None

    # ---- the caller's side --------------------------------------------------------------------

    def exchange(self, payload: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None and self._waiter is None
        self._reset()
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._waiter

    def done(self) -> None:
        """The exchange is over (answered, failed, timed out or cancelled)."""
        self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whichever event loop made it (uvloop's are not asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection's framing is lost
            return
        self._started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._error = self._error or MalformedAnswer(f"malformed HTTP answer ({exc})")
        if self._error is not None:
            self._settle(error=self._error)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and self._declared is None and not self._chunked and self._error is None:
            self.on_message_complete()  # an answer delimited by the end of the connection
            return
        self._settle(error=Disconnected(answer_started=self._started))

    # ---- parser callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        text = value.decode("latin-1")
        if key in self._keep:
            self._headers[self._keep[key]] = text
        elif key == b"content-length" and text.strip().isdigit():
            self._declared = int(text)
        elif key == b"transfer-encoding":
            self._chunked = "chunked" in text.lower()
        elif key == b"content-encoding":
            self._encoding = text.strip().lower()
        elif key == b"location":
            self._location = text

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._declared is not None and self._declared > self._max_body_bytes:
            self._error = over_cap(self._max_body_bytes, self._declared)

    def on_body(self, body: bytes) -> None:
        if self._error is not None:
            return
        self._size += len(body)
        if self._size > self._max_body_bytes:
            self._error = over_cap(self._max_body_bytes)
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._reset()
            return
        if self._error is not None:
            return
        body = b"".join(self._chunks)
        if self._encoding not in (None, "identity"):
            try:
                body = inflate(body, self._encoding, self._max_body_bytes)
            except InvalidResponse as exc:
                self._error = exc
                return
        keep_alive = self._parser.should_keep_alive()
        self._settle(answer=Answer(status, body, self._headers, self._location))
        if not keep_alive:
            self.close()

    def _settle(self, *, answer: Answer | None = None, error: Exception | None = None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(answer)  # type: ignore[arg-type]


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate answer inflated, never past `limit` bytes."""
    wbits = _INFLATE_WBITS.get(encoding)
    if wbits is None:
        raise InvalidResponse(f"answer in content encoding {encoding!r}, which was not asked for")
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, limit + 1)
        if encoding == "deflate" and not data and body:
            raise zlib.error("empty")
    except zlib.error:
        if encoding != "deflate":
            raise InvalidResponse(f"answer is not valid {encoding} data") from None
        # "deflate" in the wild is often raw deflate, without the zlib header.
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(body, limit + 1)
        except zlib.error:
            raise InvalidResponse("answer is not valid deflate data") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise over_cap(limit)
    return data


class Http1Client:
    """Keep-alive connections per address; one request at a time on each.

    Timeouts are enforced by one sweep every `sweep_s` over the requests in flight, not by a timer
    per request: arming and cancelling a timer for each request cost more CPU than the rest of
    the client's own work, and a timeout of seconds (server.request_timeout_s) does not need
    better than `sweep_s` precision (it fires at most that late)."""

    def __init__(
        self, *, keep_headers: Sequence[str] = (), max_body_bytes: int, sweep_s: float = SWEEP_S
    ) -> None:
        self._keep = {name.lower().encode("latin-1"): name for name in keep_headers}
        self._max_body_bytes = max_body_bytes
        self._sweep_s = sweep_s
        self._idle: dict[_Address, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        # Waiters of the requests in flight -> their deadline (loop time).
        self._deadlines: dict[asyncio.Future[Answer], float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None

    async def request(
        self, wire: Wire, timeout_s: float | None, clock: Callable[[], float] = time.monotonic
    ) -> tuple[Answer, float]:
        """The answer to `wire`, and `clock()` when its bytes were written; raises Http1Error,
        InvalidResponse (over the cap, an encoding that was not asked for) or
        asyncio.TimeoutError. Connecting counts in the timeout but not in the time from the write:
        a request's latency is the server's, whether or not it opened a connection (the aiohttp
        session's first requests reused the health checks' connections)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        address = (wire.host, wire.port, wire.tls)
        for attempt in range(2):
            connection = self._reuse(address)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(address, deadline)
            try:
                return await self._exchange(connection, wire.payload, deadline, clock)
            except Disconnected as exc:
                if not reused or exc.answer_started or attempt:
                    raise
            # the reused connection was already closed by the server: once more, on a new one
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _reuse(self, address: _Address) -> _Connection | None:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()
            transport = connection.transport
            if not connection.closed and transport is not None and not transport.is_closing():
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self, address: _Address, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port, tls = address
        connecting = asyncio.ensure_future(
            loop.create_connection(
                lambda: _Connection(address, self._keep, self._max_body_bytes),
                host,
                port,
                ssl=self._tls_context() if tls else None,
            )
        )
        # asyncio.wait, not wait_for: on Python 3.11 wait_for swallows a cancellation that arrives
        # as the connection completes, and the caller (a run told to stop) would go on to wait for
        # an answer for the whole request timeout.
        try:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait({connecting}, timeout=timeout)
        except BaseException:
            connecting.cancel()
            if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
                connecting.result()[0].close()
            raise
        if not connecting.done():
            connecting.cancel()
            raise asyncio.TimeoutError()
        try:
            _transport, connection = connecting.result()
        except OSError as exc:
            raise ConnectFailed(exc) from None
        self._open.add(connection)
        return connection

    async def _exchange(
        self, connection: _Connection, payload: bytes, deadline: float | None, clock: Callable[[], float]
    ) -> tuple[Answer, float]:
        sent_at = clock()
        waiter = connection.exchange(payload)
        if deadline is not None:
            self._deadlines[waiter] = deadline
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)
        answered = False
        try:
            answer = await waiter
            answered = True
            return answer, sent_at
        finally:
            self._deadlines.pop(waiter, None)
            connection.done()
            if answered and not connection.closed:
                self._idle.setdefault(connection.address, []).append(connection)
            else:
                # Failed, timed out or cancelled: an answer may still be on its way, so the
                # connection's framing cannot be trusted again.
                connection.close()
                self._open.discard(connection)

    def _tls_context(self) -> ssl.SSLContext:
        # Made on the first https request: loading the CA store costs memory a plain-http client
        # never needs.
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for waiter in [w for w, deadline in self._deadlines.items() if deadline <= now]:
            del self._deadlines[waiter]
            if not waiter.done():
                waiter.set_exception(asyncio.TimeoutError())
        self._sweeper = loop.call_later(self._sweep_s, self._sweep) if self._deadlines else None
