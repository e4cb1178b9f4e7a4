"""What a port speaks (protocols/sniff.py), heard from real loopback servers: HTTP/1.1 in plaintext
and over TLS, a server that answers HTML to anything, one that stays silent, one that closes, and
nothing at all. (gRPC ports, plaintext and TLS, are in test_oipgrpc.py.)"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from warmgate.protocols.sniff import HTTP1, HTTP2, Heard, classify, mismatch, quote, sniff

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def server_tls(certificate: tuple[Path, Path], alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


@pytest.fixture
async def http_port(aiohttp_server: Any) -> Callable[..., Awaitable[int]]:
    async def start(tls: ssl.SSLContext | None = None) -> int:
        async def ok(_request: web.Request) -> web.Response:
            return web.Response(text="")

        app = web.Application()
        app.router.add_get("/", ok)
        server = await aiohttp_server(app, ssl=tls)
        return int(server.port)

    return start


@pytest.fixture
async def raw_port() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_plaintext_http_port_is_what_http_urls_need(http_port: Callable[..., Awaitable[int]]) -> None:
    port = await http_port()
    url = f"http://127.0.0.1:{port}"
    assert await sniff(url, 1) == Heard(tls=False, speaks=HTTP1)
    assert mismatch(url, await sniff(url, 1)) is None
    secure = f"https://127.0.0.1:{port}"
    assert (
        mismatch(secure, await sniff(secure, 1))
        == f"{secure} answers plaintext HTTP/1.1, not TLS: use http://"
    )
    grpcs = f"grpcs://127.0.0.1:{port}"
    assert mismatch(grpcs, await sniff(grpcs, 1)) == (
        f"{grpcs} answers plaintext HTTP/1.1, not TLS: use grpc://, and is server.url the gRPC port?"
    )


async def test_a_tls_http_port(
    http_port: Callable[..., Awaitable[int]], certificate: tuple[Path, Path]
) -> None:
    port = await http_port(server_tls(certificate, ["http/1.1"]))
    secure = f"https://127.0.0.1:{port}"
    assert await sniff(secure, 1) == Heard(tls=True, speaks=HTTP1)
    assert mismatch(secure, await sniff(secure, 1)) is None
    plain = f"http://127.0.0.1:{port}"
    assert (
        mismatch(plain, await sniff(plain, 1))
        == f"{plain} expects TLS, but server.url is plaintext: use https://"
    )
    grpcs = f"grpcs://127.0.0.1:{port}"
    assert mismatch(grpcs, await sniff(grpcs, 1)) == (
        f"{grpcs} answers HTTP/1.1 over TLS, not gRPC: is server.url the gRPC port?"
    )


async def test_an_answer_in_no_known_protocol_is_quoted(
    raw_port: Callable[[Handler], Awaitable[int]],
) -> None:
    # Python's http.server answers the HTTP/2 preface with an HTML page and no status line.
    async def html(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b'<!DOCTYPE HTML>\n<html lang="en">\n<head>')
        await writer.drain()
        writer.close()

    port = await raw_port(html)
    url = f"grpc://127.0.0.1:{port}"
    heard = await sniff(url, 1)
    assert heard == Heard(tls=False, speaks=None, said="'<!DOCTYPE HTML>\\n<html lang=\"en\">\\n<head>'")
    reason = mismatch(url, heard)
    assert reason is not None and reason.startswith(
        f"{url} does not answer gRPC (HTTP/2): it answered '<!DOCTYPE"
    )
    assert "\n" not in reason


@pytest.mark.parametrize("behaviour", ["silent", "closes"])
async def test_a_port_that_says_nothing_tells_nothing(
    behaviour: str, raw_port: Callable[[Handler], Awaitable[int]]
) -> None:
    done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "silent":
            await done.wait()
        writer.close()

    port = await raw_port(handler)
    started = time.monotonic()
    for scheme in ("grpc", "grpcs", "http", "https"):
        assert await sniff(f"{scheme}://127.0.0.1:{port}", 0.3) is None
    assert time.monotonic() - started < 4 * 0.3 + 1
    done.set()


async def test_nothing_listening_and_odd_urls_tell_nothing(unused_tcp_port: int) -> None:
    assert await sniff(f"grpc://127.0.0.1:{unused_tcp_port}", 1) is None
    assert await sniff("grpc://127.0.0.1", 1) is None  # no port
    assert await sniff("ftp://127.0.0.1:21", 1) is None
    assert await sniff("grpc://127.0.0.1:99999", 1) is None
    assert mismatch("grpc://h:1", None) is None


@pytest.mark.parametrize(
    ("answer", "heard"),
    [
        (b"HTTP/1.0 400 Bad Request\r\n", Heard(tls=False, speaks=HTTP1)),
        (b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04", Heard(tls=False, speaks=HTTP2)),
        (b"\x15\x03\x01\x00\x02\x02\x46", Heard(tls=True, speaks=None)),
        (b"\x16\x03\x03\x00\x40", Heard(tls=True, speaks=None)),
        (
            b"\x00\x00\x08\x07\x00",
            Heard(tls=False, speaks=None, said="'\\x00\\x00\\x08\\x07\\x00'"),
        ),
        (b"", None),
    ],
)
def test_first_bytes_are_classified(answer: bytes, heard: Heard | None) -> None:
    assert classify(answer) == heard


def test_quoted_answers_are_short_and_printable() -> None:
    said = quote(b"\x1b[31m" + b"x" * 100)
    assert said == "'\\x1b[31m" + "x" * 35 + "'..."
