"""The probe's own HTTP/1.1 server over raw loopback sockets: keep-alive, pipelining, HEAD, the
method and path answers, and the request-head limits. The probe's routes and the connection guards
(idle timeout, connection cap, log lines of a real process) are tried in test_probe_endpoints.py
and test_probe_connections.py."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.probe.conftest import ProbeFactory
from warmgate.probe.http_guard import HTTP_LOGGER, HttpLimits
from warmgate.probe.http_server import (
    MAX_BODY_BYTES,
    MAX_QUEUED_REQUESTS,
    Handler,
    HttpServer,
    Request,
    Response,
)

pytestmark = pytest.mark.timeout(30)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return Answer(int(status), headers, body)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except (TimeoutError, asyncio.TimeoutError):
        return False
    except ConnectionError:
        return True


@dataclass
class Running:
    server: HttpServer
    port: int
    observed: list[tuple[str, int]]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


Serve = Callable[..., Awaitable[Running]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[HttpServer] = []

    async def start(routes: dict[str, Handler], limits: HttpLimits | None = None) -> Running:
        observed: list[tuple[str, int]] = []
        server = HttpServer(
            routes,
            limits or HttpLimits(),
            logging.getLogger(HTTP_LOGGER),
            observe=lambda path, status, _seconds: observed.append((path, status)),
        )
        servers.append(server)
        (_, port), *_ = await server.start("127.0.0.1", 0)
        return Running(server, port, observed)

    yield start
    for server in servers:
        await server.close()


async def hello(request: Request) -> Response:
    return Response.json({"hello": request.path, "method": request.method})


def get(path: str, *headers: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: probe", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_importing_the_server_does_not_import_aiohttp() -> None:
    # The reason the server exists: aiohttp's import costs the sidecar ~16 MiB.
    code = "import sys, warmgate.probe.http_server; print(sorted(m for m in sys.modules if 'aiohttp' in m))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


async def test_keep_alive_answers_several_requests_on_one_connection(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    for _ in range(3):
        writer.write(get("/hello?x=1"))
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.body == b'{"hello": "/hello", "method": "GET"}'
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert "connection" not in answer.headers
    assert running.observed == [("/hello", 200)] * 3
    writer.close()


async def test_pipelined_requests_are_answered_in_order(serve: Serve) -> None:
    release = asyncio.Event()
    slow_started = asyncio.Event()

    async def slow(request: Request) -> Response:
        slow_started.set()
        await release.wait()
        return Response(200, b"slow")

    async def fast(request: Request) -> Response:
        return Response(200, b"fast")

    running = await serve({"/slow": slow, "/fast": fast})
    reader, writer = await running.connect()
    writer.write(get("/slow") + get("/fast") + get("/nope") + get("/fast"))
    # The later requests are parsed and ready while the first is still being answered.
    await asyncio.wait_for(slow_started.wait(), 5)
    release.set()
    answers = [await read_answer(reader) for _ in range(4)]
    assert [(a.status, a.body[:4]) for a in answers] == [
        (200, b"slow"),
        (200, b"fast"),
        (404, b"404:"),
        (200, b"fast"),
    ]
    writer.close()


async def test_head_sends_the_get_headers_without_a_body(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello", method="HEAD") + get("/hello"))
    head = await read_answer(reader, head_only=True)
    assert head.status == 200
    assert int(head.headers["content-length"]) == len(b'{"hello": "/hello", "method": "HEAD"}')
    # Had the HEAD answer carried a body, it would be read here as the next answer's status line.
    after = await read_answer(reader)
    assert after.status == 200 and after.body == b'{"hello": "/hello", "method": "GET"}'
    writer.close()


async def test_other_methods_are_405_with_allow_and_unknown_paths_404(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello", "Content-Length: 2", method="POST") + b"{}")
    refused = await read_answer(reader)
    assert (refused.status, refused.headers["allow"]) == (405, "GET, HEAD")
    writer.write(get("/nothing-here?q=/hello"))
    missing = await read_answer(reader)
    assert missing.status == 404 and int(missing.headers["content-length"]) == len(missing.body)
    assert running.observed == [("/hello", 405), ("/nothing-here", 404)]
    writer.close()


async def test_connection_close_is_honoured(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello", "Connection: close"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()


async def test_http_1_0_closes_unless_asked_to_keep_alive(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello", "Connection: keep-alive", version="1.0"))
    kept = await read_answer(reader)
    assert kept.status == 200 and kept.headers["connection"] == "keep-alive"
    writer.write(get("/hello", version="1.0"))
    last = await read_answer(reader)
    assert last.status == 200 and last.headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()


LIMITS = HttpLimits(max_line_size=100, max_field_size=100, max_headers=5)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/" + "a" * 200), 400),
        (get("/hello", "X-Long: " + "b" * 200), 431),
        (get("/hello", *(f"X-{i}: y" for i in range(10))), 431),
        (get("/hello", f"Content-Length: {MAX_BODY_BYTES + 1}"), 413),
        (
            get("/hello", "Transfer-Encoding: chunked")
            + b"%x\r\n" % (MAX_BODY_BYTES + 1)
            + b"c" * (MAX_BODY_BYTES + 1),
            413,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
    ],
    ids=[
        "long-target",
        "long-header",
        "many-headers",
        "body-length",
        "chunked-body",
        "bad-header",
        "version",
    ],
)
async def test_a_refused_request_is_answered_and_its_connection_closed(
    serve: Serve, request_bytes: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=HTTP_LOGGER)
    running = await serve({"/hello": hello}, LIMITS)
    reader, writer = await running.connect()
    writer.write(request_bytes)
    answer = await read_answer(reader)
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert await closed_by_server(reader)
    assert running.observed == []  # refused before routing, as the request metrics always were
    lines = [r for r in caplog.records if r.name == HTTP_LOGGER]
    assert len(lines) == 1 and lines[0].getMessage().startswith("Error handling request from 127.0.0.1")
    writer.close()


async def test_a_head_larger_than_the_limits_allow_is_refused_before_it_completes(serve: Serve) -> None:
    running = await serve({"/hello": hello}, LIMITS)
    reader, writer = await running.connect()
    # Header lines within each limit, but never ending: the whole head is bounded too.
    writer.write(b"GET /hello HTTP/1.1\r\nX-A: " + b"z" * (running.server.max_head_bytes + 1))
    answer = await read_answer(reader)
    assert answer.status == 431
    assert await closed_by_server(reader)
    writer.close()


async def test_a_small_body_is_read_and_dropped(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello", "Content-Length: 5") + b"12345" + get("/hello"))
    assert [(await read_answer(reader)).status for _ in range(2)] == [200, 200]
    writer.close()


async def test_a_handler_error_is_a_500_with_one_log_line_and_the_connection_goes_on(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("boom\nsecond line")

    caplog.set_level(logging.WARNING, logger=HTTP_LOGGER)
    running = await serve({"/broken": broken, "/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/broken") + get("/hello"))
    assert [(await read_answer(reader)).status for _ in range(2)] == [500, 200]
    assert running.observed == [("/broken", 500), ("/hello", 200)]
    assert [r.getMessage() for r in caplog.records if r.name == HTTP_LOGGER] == [
        "Error handling request from 127.0.0.1"
    ]
    writer.close()


async def test_a_client_that_half_closes_still_gets_its_answers(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello") + get("/hello"))
    writer.write_eof()
    assert [(await read_answer(reader)).status for _ in range(2)] == [200, 200]
    assert await closed_by_server(reader)
    writer.close()


async def test_closing_the_server_closes_open_connections(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    writer.write(get("/hello"))
    assert (await read_answer(reader)).status == 200
    await asyncio.wait_for(running.server.close(), 5)
    assert await closed_by_server(reader)
    assert running.server.connections == 0
    writer.close()


async def test_closing_the_server_answers_the_requests_in_flight_first(serve: Serve) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def held(request: Request) -> Response:
        started.set()
        await release.wait()
        return Response(200, b"held")

    running = await serve({"/held": held, "/hello": hello})
    idle_reader, idle_writer = await running.connect()
    idle_writer.write(get("/hello"))
    assert (await read_answer(idle_reader)).status == 200
    reader, writer = await running.connect()
    writer.write(get("/held"))
    await asyncio.wait_for(started.wait(), 5)
    closing = asyncio.ensure_future(running.server.close(grace_s=10))
    # The idle keep-alive connection goes at once; the one with a request in flight waits for it.
    assert await closed_by_server(idle_reader)
    assert not closing.done()
    release.set()
    answer = await read_answer(reader)
    assert (answer.status, answer.body, answer.headers["connection"]) == (200, b"held", "close")
    await asyncio.wait_for(closing, 5)
    assert await closed_by_server(reader)
    for each in (idle_writer, writer):
        each.close()


async def test_closing_the_server_gives_up_on_a_request_after_the_grace_period(serve: Serve) -> None:
    started = asyncio.Event()

    async def stuck(request: Request) -> Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    running = await serve({"/stuck": stuck})
    reader, writer = await running.connect()
    writer.write(get("/stuck"))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(running.server.close(grace_s=0.1), 5)
    assert await closed_by_server(reader)
    writer.close()


async def test_the_probe_routes_answer_head_and_refuse_other_methods_counted_by_path(
    config: Any, make_probe: ProbeFactory
) -> None:
    probe, client = await make_probe(config)
    head = await client.request("HEAD", "/readyz")
    assert head.status == 503 and head.headers["Cache-Control"] == "no-store"
    assert int(head.headers["Content-Length"]) > 0  # the GET answer's; no body (see the HEAD test above)
    post = await client.request("POST", "/readyz")
    assert (post.status, post.headers["Allow"]) == (405, "GET, HEAD")
    assert (await client.get("/readyz?verbose=1")).status == 503
    count = probe.registry.get_sample_value
    assert count("warmgate_probe_requests_total", {"endpoint": "/readyz", "code": "503"}) == 2
    assert count("warmgate_probe_requests_total", {"endpoint": "/readyz", "code": "405"}) == 1


async def test_a_long_pipeline_is_answered_whole_while_reading_pauses_between(serve: Serve) -> None:
    running = await serve({"/hello": hello})
    reader, writer = await running.connect()
    # More requests than a connection may queue: reading pauses and resumes as they are answered.
    count = MAX_QUEUED_REQUESTS * 10
    for _ in range(count):
        writer.write(get("/hello"))
    await writer.drain()
    answers = [await read_answer(reader) for _ in range(count)]
    assert [a.status for a in answers] == [200] * count
    assert len(running.observed) == count
    writer.close()
