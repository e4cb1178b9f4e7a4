"""Hostile clients: idle and slow connections, a connection flood, malformed requests.

The limits themselves are tried on `serve()` in process with small values (so that a timeout of
half a second proves the point); the flood and the log output against the real `warmgate probe`
with its defaults.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.probe.fakes import FakeModelServer, make_config, probe_parts
from tests.probe.test_probe_cli import LISTENING, WARMGATE, ProbeProcess, child_env, make_ready, write_config
from warmgate.probe.http_guard import HttpErrorLog, HttpLimits, RateLimit
from warmgate.probe.server import serve

pytestmark = pytest.mark.timeout(90)

# Requests a parser must refuse; each used to log a multi-line traceback.
MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n",
]

Serving = Callable[[HttpLimits], Awaitable[int]]


@pytest.fixture
async def serving(tmp_path: Path, model_server: FakeModelServer) -> AsyncIterator[Serving]:
    """Runs `serve()` in this process with the given limits; returns its port."""
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    tasks: list[asyncio.Task[int]] = []

    async def start(limits: HttpLimits) -> int:
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        config = make_config(tmp_path / "state", model_server.url)
        task = asyncio.create_task(
            serve(*probe_parts(config), host="127.0.0.1", port=0, shutdown_delay_s=0, environ={},
                  signals=signals, on_listening=lambda addresses: listening.set_result(addresses[0][1]),
                  limits=limits)
        )  # fmt: skip
        tasks.append(task)
        return await asyncio.wait_for(listening, 10)

    yield start
    for task in tasks:
        signals.put_nowait(signal.SIGTERM)
        assert await asyncio.wait_for(task, 10) == 0


async def closed_by_server(reader: asyncio.StreamReader, within_s: float = 5.0) -> bool:
    """True when the server closes the connection within the deadline."""
    try:
        return await asyncio.wait_for(reader.read(), within_s) == b""
    except (TimeoutError, asyncio.TimeoutError):
        return False
    except ConnectionError:
        return True


async def test_an_idle_connection_is_closed(serving: Serving) -> None:
    port = await serving(HttpLimits(idle_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    assert await closed_by_server(reader)
    assert time.monotonic() - started < 3.0
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_its_last_request(serving: Serving) -> None:
    port = await serving(HttpLimits(idle_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    await asyncio.wait_for(reader.readexactly(length), 5)
    assert await closed_by_server(reader)
    writer.close()


async def test_a_request_sent_byte_by_byte_is_cut_off(serving: Serving) -> None:
    port = await serving(HttpLimits(idle_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closed = asyncio.create_task(closed_by_server(reader, within_s=5.0))
    request = b"GET /readyz HTTP/1.1\r\nHost: probe\r\nX-Slow: " + b"z" * 1000
    for byte in request:
        if closed.done():
            break
        writer.write(bytes([byte]))
        # The slow client's pace (the workload), not synchronisation: the outcome is awaited below.
        await asyncio.sleep(0.02)
    assert await closed, "a slow request head kept its connection for 5 s"
    writer.close()


async def test_at_the_cap_the_oldest_connections_are_closed_and_new_ones_answered(
    serving: Serving, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="warmgate.probe")
    port = await serving(HttpLimits(idle_timeout_s=60, max_connections=20))
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}/healthz") as response,
    ):
        assert response.status == 200
    # 51 connections against a cap of 20: the 31 oldest were closed, oldest first.
    oldest = await asyncio.gather(*(closed_by_server(reader) for reader, _ in connections[:31]))
    assert all(oldest), f"{oldest.count(False)} of the 31 oldest connections are still open"
    assert not any(reader.at_eof() for reader, _ in connections[-10:])
    # 31 evictions, one line: the log is rate-limited to one a minute.
    lines = [r.getMessage() for r in caplog.records if "connection cap" in r.getMessage()]
    assert lines == ["connection cap (20) reached: closing the oldest connections (1 so far)"]
    for _, writer in connections:
        writer.close()


def test_rate_limit_counts_what_it_leaves_out() -> None:
    now = [0.0]
    limit = RateLimit(2, 10.0, clock=lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [True, True, False, False, False]
    now[0] = 10.0
    assert limit.allow() and limit.take_suppressed() == 3 and limit.take_suppressed() == 0


def test_an_http_error_record_becomes_one_line_with_the_count_left_out() -> None:
    now = [0.0]
    log_filter = HttpErrorLog(RateLimit(1, 60.0, clock=lambda: now[0]))
    logger = logging.getLogger("warmgate.probe.http.test")

    def record() -> logging.LogRecord:
        try:
            raise ValueError("400, message:\n  Invalid header token:\n\n    b'Bad Header'\n         ^")
        except ValueError:
            return logger.makeRecord(
                logger.name, logging.ERROR, __file__, 1, "Error handling request from %s",
                ("10.0.0.9",), sys.exc_info(),
            )  # fmt: skip

    first = record()
    assert log_filter.filter(first)
    assert first.getMessage() == (
        "Error handling request from 10.0.0.9: ValueError: 400, message: Invalid header token: "
        "b'Bad Header' ^"
    )
    assert first.exc_info is None and first.levelno == logging.WARNING
    assert not log_filter.filter(record()) and not log_filter.filter(record())
    now[0] = 60.0
    later = record()
    assert log_filter.filter(later) and later.getMessage().endswith("(2 similar lines left out)")


# ---- the real process ------------------------------------------------------------------------------


async def send_and_read(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_malformed_requests_log_one_line_each_rate_limited(
    tmp_path: Path, model_server: FakeModelServer
) -> None:
    child, port = await ProbeProcess.start(write_config(tmp_path, model_server.url))
    try:
        answers = [await send_and_read(port, MALFORMED[i % len(MALFORMED)]) for i in range(50)]
        assert all(
            answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 4") for answer in answers
        )
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
    finally:
        child.kill()
        await asyncio.wait_for(child.process.wait(), 10)
    output = "\n".join(child.output)
    assert "Traceback" not in output and "aiohttp" not in output
    bad = [line for line in child.output if "Error handling request" in line]
    # One line per bad request, at most the burst (10) per minute.
    assert 1 <= len(bad) <= HttpLimits().log_burst, output
    assert all(len(line) < 500 for line in bad)


CHILD_NOFILE = 1024
# More than the probe's descriptor limit: without the cap, the flood alone exhausts it.
FLOOD = 1200


def _child_nofile() -> None:
    # A common container default (containerd 2.x): a thousand connections would exhaust it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (CHILD_NOFILE, hard))


@pytest.fixture
def many_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


async def test_readyz_answers_promptly_while_over_a_thousand_connections_idle_or_trickle(
    tmp_path: Path, model_server: FakeModelServer, many_descriptors: None
) -> None:
    make_ready(tmp_path / "state")
    process = await asyncio.create_subprocess_exec(
        *WARMGATE, "probe", "-c", str(write_config(tmp_path, model_server.url)),
        "--host", "127.0.0.1", "--port", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
        preexec_fn=_child_nofile,
    )  # fmt: skip
    child = ProbeProcess(process)
    try:
        port = int((await child.expect(LISTENING)).group(1))
        connections = []
        for _ in range(FLOOD // 100):
            # A probe that stopped accepting leaves connects hanging in a full backlog: bounded.
            connections += await asyncio.wait_for(
                asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(100))), 10
            )
        slow = connections[::2]  # every other one sends a request one byte at a time
        request = b"GET /readyz HTTP/1.1\r\nHost: probe\r\nX-Slow: " + b"z" * 100
        timings = []
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection per probe, as the kubelet
        async with aiohttp.ClientSession(connector=connector) as session:
            for round_ in range(25):
                for reader, writer in slow:
                    if not writer.is_closing() and not reader.at_eof():
                        writer.write(request[round_ : round_ + 1])
                started = time.perf_counter()
                async with session.get(
                    f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    assert response.status == 200, await response.text()
                timings.append(time.perf_counter() - started)
        for _, writer in connections:
            writer.close()
        p50_ms, max_ms = statistics.median(timings) * 1000, max(timings) * 1000
        print(f"/readyz beside {FLOOD} idle/trickling connections: p50 {p50_ms:.1f} ms, max {max_ms:.1f} ms")
        # The kubelet's default probe timeout is 1 s; the figures are in docs/reliability.md.
        assert max(timings) < 1.0
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
        assert "Traceback" not in "\n".join(child.output)
    finally:
        child.kill()
        await asyncio.wait_for(child.process.wait(), 10)
