"""What a port speaks, heard at the byte level: plaintext HTTP/1.x, plaintext HTTP/2 (gRPC), or
TLS. For the start-up diagnosis of a URL whose scheme does not match its port:

- grpc:// at an HTTP/1.1 port (the HTTP port of the same server): "answers HTTP/1.1, not gRPC";
- http:// at a gRPC port: "speaks HTTP/2 (gRPC?), not HTTP/1.1";
- TLS both ways: grpc:// or http:// at a TLS port, grpcs:// or https:// at a plaintext one.

Client errors alone do not say this: a plaintext gRPC client at a TLS port only hears "Socket
closed", and aiohttp at a gRPC port reports an unparseable status line full of frame bytes.

The port is asked in the language the URL's scheme implies, so a server that speaks both on one
port (a cmux-style multiplexer) answers in the expected one and is not called a mismatch:

- plaintext schemes send what their client would send first (grpc: the HTTP/2 connection preface
  and an empty SETTINGS frame; http: `OPTIONS * HTTP/1.1`) and classify the first bytes back: a
  status line is HTTP/1.x, a SETTINGS frame is HTTP/2, a TLS record is TLS. A port that closes or
  stays silent is then offered a TLS handshake;
- TLS schemes offer a TLS handshake first (no certificate verification: the question is whether
  the port speaks TLS, not whether to trust it; ALPN offers h2 and http/1.1), and when that fails
  the plaintext question tells what the port speaks instead.

A protocol-agnostic leaf of the protocols package: the standard library only, and no answer can
make it raise (it returns None when it cannot tell: nothing listens, nothing recognisable).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

HTTP1 = "HTTP/1.x"
HTTP2 = "HTTP/2"

# The HTTP/2 client connection preface (RFC 9113 3.4) and an empty SETTINGS frame: what a gRPC
# client sends first. Plaintext gRPC servers answer with their own SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# The least intrusive HTTP/1.1 request: server-wide, reaches no application route.
HTTP1_REQUEST = b"OPTIONS * HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
# Enough of the first answer to classify it and quote its start.
READ_BYTES = 64
# Characters of an unrecognised answer quoted in a reason.
QUOTED_CHARS = 40
FRAME_HEADER_BYTES = 9
SETTINGS_FRAME = 0x04
# TLS record content types that a server sends first: alert (to a non-TLS hello) and handshake.
TLS_RECORD_TYPES = (0x15, 0x16)
TLS_MAJOR_VERSION = 0x03

# What each URL scheme's client speaks: (TLS, application protocol).
EXPECTED = {
    "http": (False, HTTP1),
    "https": (True, HTTP1),
    "grpc": (False, HTTP2),
    "grpcs": (True, HTTP2),
}


@dataclass(frozen=True)
class Heard:
    """What a port answered. `tls`: True when it completed a TLS handshake (or sent a TLS record),
    False when it answered in plaintext. `speaks`: HTTP1, HTTP2 or None (not recognised, or over
    TLS without ALPN). `said`: the start of an unrecognised plaintext answer, printable."""

    tls: bool
    speaks: str | None
    said: str = ""


async def sniff(url: str, timeout_s: float) -> Heard | None:
    """What the host and port of `url` speak, asked as its scheme's client would ask; None when
    it cannot tell (nothing listens, no answer, an unknown scheme)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in EXPECTED or not parts.hostname or port is None:
        return None
    host = parts.hostname
    tls_first, speaks = EXPECTED[parts.scheme]
    authority = parts.netloc.rpartition("@")[2].encode("ascii", "replace")  # no credentials sent
    first = HTTP2_PREFACE if speaks == HTTP2 else HTTP1_REQUEST % authority
    try:
        return await asyncio.wait_for(_ask(host, port, first, tls_first=tls_first), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return None


async def _ask(host: str, port: int, first: bytes, *, tls_first: bool) -> Heard | None:
    if tls_first:
        return await _tls(host, port) or await _plaintext(host, port, first)
    # Closed or silent: a TLS port does both to plaintext.
    return await _plaintext(host, port, first) or await _tls(host, port)


def mismatch(url: str, heard: Heard | None) -> str | None:
    """A one-line reason when what the port speaks is not what `url`'s scheme needs, else None
    (None too when nothing was heard: no claim without evidence)."""
    if heard is None:
        return None
    scheme = url.partition("://")[0]
    if scheme not in EXPECTED:
        return None
    want_tls, want = EXPECTED[scheme]
    grpc = want == HTTP2
    if heard.tls and not want_tls:
        secure = "grpcs://" if grpc else "https://"
        return f"{url} expects TLS, but server.url is plaintext: use {secure}"
    if not heard.tls and want_tls:
        plain = "grpc://" if grpc else "http://"
        if heard.speaks == HTTP2:
            return f"{url} speaks plaintext HTTP/2 (gRPC without TLS), not TLS: use grpc://"
        if heard.speaks == HTTP1:
            return f"{url} answers plaintext HTTP/1.1, not TLS: use {plain}" + (
                ", and is server.url the gRPC port?" if grpc else ""
            )
        return f"{url} does not speak TLS: use {plain}"
    if grpc and heard.speaks == HTTP1:
        over = " over TLS" if heard.tls else ""
        return f"{url} answers HTTP/1.1{over}, not gRPC: is server.url the gRPC port?"
    if not grpc and heard.speaks == HTTP2 and not heard.tls:
        return (
            f"{url} speaks HTTP/2 (gRPC?), not HTTP/1.1: is server.url the HTTP port "
            "(or is the server's protocol oip-grpc)?"
        )
    if not heard.tls and heard.speaks is None and heard.said:
        expected = "gRPC (HTTP/2)" if grpc else "HTTP/1.1"
        return f"{url} does not answer {expected}: it answered {heard.said}"
    return None


async def _plaintext(host: str, port: int, first: bytes) -> Heard | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(first)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionError):
            # A SETTINGS frame header may come in a packet of its own: read until one is whole.
            while len(answer) < FRAME_HEADER_BYTES:
                chunk = await reader.read(READ_BYTES - len(answer))
                if not chunk:
                    break
                answer += chunk
    finally:
        writer.transport.abort()
    return classify(answer)


def classify(answer: bytes) -> Heard | None:
    """The first bytes a port sent back to plaintext; None for nothing at all."""
    if not answer:
        return None
    if answer.startswith(b"HTTP/"):
        return Heard(tls=False, speaks=HTTP1)
    if len(answer) >= FRAME_HEADER_BYTES and answer[3] == SETTINGS_FRAME:
        return Heard(tls=False, speaks=HTTP2)
    if len(answer) >= 2 and answer[0] in TLS_RECORD_TYPES and answer[1] == TLS_MAJOR_VERSION:
        return Heard(tls=True, speaks=None)
    return Heard(tls=False, speaks=None, said=quote(answer))


async def _tls(host: str, port: int) -> Heard | None:
    """A TLS handshake without verification; None when the port does not complete one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Deliberate: this only asks whether the port speaks TLS; nothing is sent over it.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        _reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except (ssl.SSLError, ConnectionError):
        return None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    finally:
        writer.transport.abort()
    return Heard(tls=True, speaks={"h2": HTTP2, "http/1.1": HTTP1}.get(alpn or ""))


def quote(answer: bytes) -> str:
    """The start of an answer as a printable Python literal ('<!DOCTYPE HTML>\\n<html>...')."""
    text = answer.decode("latin-1")
    return repr(text[:QUOTED_CHARS]) + ("..." if len(text) > QUOTED_CHARS else "")
