"""Limits that keep the sidecar answering the kubelet while other clients misbehave.

The probe port is reachable by anything on the pod network. Left at aiohttp's defaults, a client
that opens connections and sends nothing keeps each one for an hour, a thousand of them exhaust
the file descriptors (then accept() fails and the kubelet's probes time out), and every malformed
request line logs a multi-line traceback. So:

- idle connections, including ones that never finish a request head (slowloris), are closed after
  `idle_timeout_s` (aiohttp's keep-alive timeout, which also runs from the connection's start);
- open connections are capped, below the descriptor limit: at the cap the *oldest* connection is
  closed to admit the new one. A kubelet probe lives for milliseconds, so the oldest are the idle
  or slow ones; refusing new connections instead would refuse the kubelet first;
- request heads are bounded (line, field and header count), which also bounds what a slow
  connection can make the sidecar hold: about max_headers x max_field_size per connection;
- bad requests (and any unhandled error) log one line, at most `burst` per `window_s`, with a
  count of the lines left out; the traceback only when debug logging is on.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from yarl import URL

from warmgate.probe.state_view import shorten
from warmgate.redact import redact_urls

# Descriptors kept free for what the sidecar itself opens (state files, the lock, its own client
# connections to the model server and the Kubernetes API, logging).
RESERVED_FDS = 64
# aiohttp's logger for request errors is replaced by this one (see HttpErrorLog).
HTTP_LOGGER = "warmgate.probe.http"


@dataclass(frozen=True)
class HttpLimits:
    # Prometheus reconnects after this when its scrape interval is longer: cheap. The kubelet opens
    # a new connection per probe anyway.
    idle_timeout_s: float = 5.0
    # The kubelet, Prometheus and a person with curl need a handful; see the module docstring.
    max_connections: int = 256
    max_line_size: int = 4096
    max_field_size: int = 4096
    max_headers: int = 32
    # Room for a burst of connections to wait for accept(); a full queue drops the kubelet's SYN
    # and costs it a 1 s retransmit. The kernel caps it at net.core.somaxconn.
    backlog: int = 1024
    # One line per bad request, at most `log_burst` of them per `log_window_s`.
    log_burst: int = 10
    log_window_s: float = 60.0

    def runner_options(self, logger: logging.Logger) -> dict[str, Any]:
        """Keyword arguments for web.AppRunner (passed through to every RequestHandler)."""
        return {
            "keepalive_timeout": self.idle_timeout_s,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
            "logger": logger,
        }

    def connection_cap(self) -> int:
        """max_connections, lowered to fit the process's descriptor limit."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(8, min(self.max_connections, soft - RESERVED_FDS))


class RateLimit:
    """At most `burst` events per `window_s`; counts the ones refused."""

    def __init__(self, burst: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._allowed = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock()
        if now - self._window_start >= self.window_s:
            self._window_start, self._allowed = now, 0
        if self._allowed < self.burst:
            self._allowed += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


class HttpErrorLog(logging.Filter):
    """Turns aiohttp's per-request error records into rate-limited single lines."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # aiohttp's debug records: shown only when debug logging is on
        if not self.limit.allow():
            return False
        detail = ""
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # HTTP parser errors span several lines and quote the offending bytes: one line.
            text = " ".join(str(exc)[:1000].split())
            detail = f": {type(exc).__name__}: {text}" if text else f": {type(exc).__name__}"
        suppressed = self.limit.take_suppressed()
        more = f" ({suppressed} similar lines left out)" if suppressed else ""
        line = shorten(redact_urls(record.getMessage() + detail), 300) + more
        record.msg, record.args = "%s", (line,)
        # A client's malformed request is not the sidecar's error.
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            record.exc_info, record.exc_text = None, None
        return True


def http_error_logger(limits: HttpLimits) -> tuple[logging.Logger, HttpErrorLog]:
    """The logger to hand aiohttp, with its filter installed; remove the filter when done."""
    logger = logging.getLogger(HTTP_LOGGER)
    log_filter = HttpErrorLog(RateLimit(limits.log_burst, limits.log_window_s))
    logger.addFilter(log_filter)
    return logger, log_filter


class CappedTCPSite(web.BaseSite):
    """aiohttp's TCPSite with a cap on open connections (the oldest is closed to admit a new one).

    aiohttp has no connection limit, so the site wraps the runner's protocol factory; the
    connections themselves are aiohttp's, tracked by its web.Server in the order they opened.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        backlog: int,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self.max_connections = max_connections
        self.evicted = 0
        self._on_evict = on_evict

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def admit() -> RequestHandler:
            # Connections whose transport is gone are still listed until their task finishes.
            open_now = [handler for handler in server.connections if handler.transport is not None]
            for oldest in open_now[: max(0, len(open_now) - self.max_connections + 1)]:
                oldest.force_close()
                self.evicted += 1
                if self._on_evict is not None:
                    self._on_evict(self.evicted)
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            admit, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
