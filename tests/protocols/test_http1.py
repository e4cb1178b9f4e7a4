"""The lean HTTP/1.1 client (warmgate/protocols/_http1.py) against raw loopback servers that write
exactly the bytes each test needs: framing, keep-alive, encodings, caps and the failures."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from warmgate.config import ServerConfig
from warmgate.protocols import PreparedRequest, make_adapter
from warmgate.protocols._http1 import (
    Answer,
    ConnectFailed,
    Disconnected,
    Http1Client,
    MalformedAnswer,
    Wire,
    serialise,
)
from warmgate.protocols.answers import InvalidResponse

pytestmark = pytest.mark.timeout(30)

# One request as the server saw it: (request line and headers, body).
Seen = tuple[bytes, bytes]
# Given what it saw and its index on this connection, the bytes to answer (None: close instead).
Responder = Callable[[Seen, int], Awaitable[bytes | None]]


@dataclass
class RawServer:
    port: int = 0
    connections: int = 0
    seen: list[Seen] = field(default_factory=list)
    server: asyncio.Server | None = None
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str = "/infer") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


StartServer = Callable[[Responder], Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[StartServer]:
    servers: list[RawServer] = []

    async def start(respond: Responder) -> RawServer:
        state = RawServer()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            task = asyncio.current_task()
            assert task is not None
            state.handlers.add(task)
            index = 0
            try:
                while (seen := await read_request(reader)) is not None:
                    state.seen.append(seen)
                    answer = await respond(seen, index)
                    index += 1
                    if answer is None:
                        break
                    writer.write(answer)
                    await writer.drain()
                    if b"connection: close" in answer.lower():
                        break
            except asyncio.CancelledError:
                pass  # the test is over
            finally:
                writer.close()

        state.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        state.port = state.server.sockets[0].getsockname()[1]
        servers.append(state)
        return state

    yield start
    for state in servers:
        assert state.server is not None
        state.server.close()
        for task in state.handlers:
            task.cancel()
        await asyncio.gather(*state.handlers, return_exceptions=True)


def ok(body: bytes = b'{"outputs": []}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def always(answer: bytes) -> Responder:
    async def respond(_seen: Seen, _index: int) -> bytes | None:
        return answer

    return respond


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client(keep_headers=("X-Kept",), max_body_bytes=1000)
    yield http
    await http.close()


async def ask(client: Http1Client, request: Wire, timeout_s: float) -> Answer:
    answer, _sent_at = await client.request(request, timeout_s)
    return answer


def wire(url: str, body: bytes = b'{"x":1}', headers: dict[str, str] | None = None) -> Wire:
    serialised = serialise("POST", url, headers or {"Content-Type": "application/json"}, body)
    assert serialised is not None
    return serialised


async def test_request_bytes_are_what_aiohttp_would_send_in_substance(
    raw_server: StartServer, client: Http1Client
) -> None:
    server = await raw_server(await always(ok()))
    answer = await ask(client, wire(server.url("/v2/models/m/infer?a=1")), 2.0)
    assert answer.status == 200 and answer.body == b'{"outputs": []}'
    head, body = server.seen[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/m/infer?a=1 HTTP/1.1"
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == "7" and body == b'{"x":1}'
    assert headers["accept-encoding"] == "gzip, deflate"
    assert headers["user-agent"] == "warmgate"


async def test_keep_alive_reuses_one_connection_per_request_in_flight(
    raw_server: StartServer, client: Http1Client
) -> None:
    async def respond(seen: Seen, _index: int) -> bytes | None:
        await asyncio.sleep(0)  # let the other requests in flight reach the server
        return ok(seen[1])  # echo: answers must not be crossed between requests

    server = await raw_server(respond)
    for _ in range(3):
        bodies = [b'{"n":%d}' % i for i in range(4)]
        answers = await asyncio.gather(*(ask(client, wire(server.url(), b), 2.0) for b in bodies))
        assert [a.body for a in answers] == bodies
    assert len(server.seen) == 12
    assert server.connections <= 4


async def test_connection_close_is_honoured_and_the_next_request_connects_again(
    raw_server: StartServer, client: Http1Client
) -> None:
    server = await raw_server(await always(ok(extra=b"Connection: close\r\n")))
    for _ in range(3):
        assert (await ask(client, wire(server.url()), 2.0)).status == 200
    assert server.connections == 3


async def test_chunked_and_end_of_connection_delimited_answers(
    raw_server: StartServer, client: Http1Client
) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    server = await raw_server(await always(chunked))
    assert (await ask(client, wire(server.url()), 2.0)).body == b"abcde"

    async def until_close(_seen: Seen, _index: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"

    server = await raw_server(until_close)
    assert (await ask(client, wire(server.url()), 2.0)).body == b"all of it"


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: zlib.compress(b, wbits=-15))],
)
async def test_compressed_answers_are_inflated(
    raw_server: StartServer, client: Http1Client, encoding: str, pack: Callable[[bytes], bytes]
) -> None:
    server = await raw_server(
        await always(ok(pack(b"x" * 500), b"Content-Encoding: %s\r\n" % encoding.encode()))
    )
    assert (await ask(client, wire(server.url()), 2.0)).body == b"x" * 500


async def test_caps_hold_declared_streamed_and_inflated(raw_server: StartServer, client: Http1Client) -> None:
    server = await raw_server(await always(ok(b"y" * 1001)))
    with pytest.raises(InvalidResponse, match="1,001 bytes is over the 1,000-byte cap"):
        await ask(client, wire(server.url()), 2.0)
    chunk = b"%x\r\n%s\r\n" % (600, b"z" * 600)
    streamed = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    server = await raw_server(await always(streamed))
    with pytest.raises(InvalidResponse, match="stopped reading"):
        await ask(client, wire(server.url()), 2.0)
    bomb = ok(gzip.compress(b"\0" * 100_000), b"Content-Encoding: gzip\r\n")
    server = await raw_server(await always(bomb))
    with pytest.raises(InvalidResponse, match="cap"):
        await ask(client, wire(server.url()), 2.0)
    server = await raw_server(await always(ok(b"abc", b"Content-Encoding: br\r\n")))
    with pytest.raises(InvalidResponse, match="'br', which was not asked for"):
        await ask(client, wire(server.url()), 2.0)


async def test_kept_headers_under_the_callers_spelling(raw_server: StartServer, client: Http1Client) -> None:
    server = await raw_server(await always(ok(extra=b"x-KEPT: 12\r\nX-Other: no\r\n")))
    answer = await ask(client, wire(server.url()), 2.0)
    assert dict(answer.headers) == {"X-Kept": "12"}


async def test_interim_answer_is_skipped(raw_server: StartServer, client: Http1Client) -> None:
    server = await raw_server(await always(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")))
    assert (await ask(client, wire(server.url()), 2.0)).body == b"final"


async def test_server_dropping_an_idle_connection_costs_no_failure(
    raw_server: StartServer, client: Http1Client
) -> None:
    # The keep-alive race: the server closes a connection the client holds as idle. The request
    # sent on it sees the close before any answer and goes once more on a new connection.
    async def respond(_seen: Seen, index: int) -> bytes | None:
        return ok() if index == 0 else None

    server = await raw_server(respond)
    for _ in range(3):
        assert (await ask(client, wire(server.url()), 2.0)).status == 200
    assert server.connections >= 3


async def test_failures_are_named(raw_server: StartServer, client: Http1Client) -> None:
    async def close(_seen: Seen, _index: int) -> bytes | None:
        return None

    server = await raw_server(close)
    with pytest.raises(Disconnected, match="server closed the connection"):
        await ask(client, wire(server.url()), 2.0)

    server = await raw_server(await always(b"NOT HTTP AT ALL\r\n\r\n"))
    with pytest.raises(MalformedAnswer, match="malformed HTTP answer"):
        await ask(client, wire(server.url()), 2.0)

    async def hang(_seen: Seen, _index: int) -> bytes | None:
        await asyncio.Event().wait()
        return None

    server = await raw_server(hang)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await ask(client, wire(server.url()), 0.1)
    assert loop.time() - started >= 0.1

    closed = await raw_server(close)
    assert closed.server is not None
    closed.server.close()
    await closed.server.wait_closed()
    with pytest.raises(ConnectFailed, match="cannot connect"):
        await ask(client, wire(closed.url()), 2.0)


async def test_a_timed_out_connection_is_not_reused(raw_server: StartServer, client: Http1Client) -> None:
    async def slow_first(seen: Seen, index: int) -> bytes | None:
        if index == 0 and seen[1] == b"slow":
            await asyncio.sleep(0.3)
        return ok(seen[1])

    server = await raw_server(slow_first)
    with pytest.raises(asyncio.TimeoutError):
        await ask(client, wire(server.url(), b"slow"), 0.05)
    # The late answer to "slow" must not be read as the answer to the next request.
    answer = await ask(client, wire(server.url(), b"fast"), 2.0)
    assert answer.body == b"fast"


@pytest.mark.parametrize(
    ("url", "host", "address"),
    [
        ("http://example.test/x", "example.test", ("example.test", 80)),
        ("http://example.test:80/x", "example.test", ("example.test", 80)),
        ("http://example.test:8080/x", "example.test:8080", ("example.test", 8080)),
        ("http://[::1]/x", "[::1]", ("::1", 80)),
        ("http://[::1]:80/x", "[::1]", ("::1", 80)),
        ("http://[::1]:9000/x", "[::1]:9000", ("::1", 9000)),
    ],
)
def test_host_header_and_address(url: str, host: str, address: tuple[str, int]) -> None:
    serialised = serialise("GET", url, {}, None)
    assert serialised is not None
    head = serialised.payload.decode()
    assert head.startswith(f"GET /x HTTP/1.1\r\nHost: {host}\r\n")
    assert "Content-Length" not in head  # a GET without a body, as aiohttp sends it
    assert (serialised.host, serialised.port) == address


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("https://127.0.0.1:1/x", {}),
        ("http://user:secret@127.0.0.1:1/x", {}),
        ("http://127.0.0.1:1/a b", {}),
        ("http://127.0.0.1:1/caf\u00e9", {}),
        ("http://127.0.0.1:1/x", {"X-Bad": "a\r\nInjected: yes"}),
        ("grpc://127.0.0.1:1", {}),
    ],
)
def test_what_it_does_not_send_goes_through_aiohttp(url: str, headers: dict[str, str]) -> None:
    assert serialise("POST", url, headers, b"") is None


async def test_adapter_sends_plain_http_over_its_own_connections_and_reports_redirects(
    raw_server: StartServer,
) -> None:
    server = await raw_server(
        await always(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")
    )
    adapter = make_adapter(ServerConfig(url=server.url(""), model="m"))
    async with aiohttp.ClientSession() as session:
        result = await adapter.send(
            session, PreparedRequest("POST", server.url(), b"{}"), aiohttp.ClientTimeout(total=2)
        )
    await adapter.aclose()
    assert b"user-agent: warmgate" in server.seen[0][0].lower()
    assert result.kind == "http_307"
    assert "redirects to /elsewhere" in result.message and "does not follow redirects" in result.message


async def test_a_cancelled_request_ends_at_once_whether_connecting_or_waiting(
    raw_server: StartServer,
) -> None:
    # A run told to stop cancels its requests; none may go on waiting for its 60 s timeout (on
    # Python 3.11 asyncio.wait_for swallowed a cancellation that met a completing connect).
    async def hang(_seen: Seen, _index: int) -> bytes | None:
        await asyncio.Event().wait()
        return None

    server = await raw_server(hang)
    for delay in (0.0, 0.0005, 0.002, 0.01):
        http = Http1Client(max_body_bytes=1000)
        task = asyncio.ensure_future(http.request(wire(server.url()), 60.0))
        await asyncio.sleep(delay)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done and task.cancelled(), f"still running {delay}s after the start"
        await http.close()


def test_https_and_credentials_are_carried_only_when_asked() -> None:
    url = "https://us%40er:p%3Ass@example.test:443/health"
    assert serialise("GET", url, {}, None) is None  # the timed requests leave these to aiohttp
    serialised = serialise("GET", url, {}, None, https=True, credentials=True)
    assert serialised is not None
    assert (serialised.host, serialised.port, serialised.tls) == ("example.test", 443, True)
    head = serialised.payload.decode()
    # Basic authorisation of the unquoted user and password, as aiohttp sends it; no userinfo in Host.
    assert "\r\nHost: example.test\r\n" in head
    assert "\r\nAuthorization: Basic dXNAZXI6cDpzcw==\r\n" in head  # base64 of "us@er:p:ss"
    assert serialise("GET", "http://user@example.test/x", {}, None, https=True) is None
    plain = serialise("GET", "http://example.test/x", {}, None, https=True)
    assert plain is not None and plain.tls is False and plain.port == 80


async def test_https_checks_the_certificate_against_the_ca_store(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            while await read_request(reader) is not None:
                writer.write(ok(b"fine"))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    request = serialise("GET", f"https://127.0.0.1:{port}/health", {}, None, https=True)
    assert request is not None and request.tls
    try:
        untrusting = Http1Client(max_body_bytes=1000)
        with pytest.raises(ConnectFailed, match="certificate verify failed"):
            await ask(untrusting, request, 5)
        await untrusting.close()
        # The CA store is the system's, as for aiohttp's default context: SSL_CERT_FILE names one.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting = Http1Client(max_body_bytes=1000)
        assert (await ask(trusting, request, 5)).body == b"fine"
        assert (await ask(trusting, request, 5)).body == b"fine"  # kept alive and reused
        await trusting.close()
    finally:
        server.close()
