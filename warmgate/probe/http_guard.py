"""Limits that keep the sidecar answering the kubelet while other clients misbehave.

The probe port is reachable by anything on the pod network. Without limits, a client that opens
connections and sends nothing keeps each one as long as it likes, a thousand of them exhaust the
file descriptors (then accept() fails and the kubelet's probes time out), and every malformed
request line logs a multi-line traceback. So the probe's server (http_server.py) applies these:

- idle connections, including ones that never finish a request head (slowloris), are closed after
  `idle_timeout_s`, counted from the connection's start and from each answer;
- open connections are capped, below the descriptor limit: at the cap the *oldest* connection is
  closed to admit the new one. A kubelet probe lives for milliseconds, so the oldest are the idle
  or slow ones; refusing new connections instead would refuse the kubelet first;
- request heads are bounded (line, field and header count), which also bounds what a slow
  connection can make the sidecar hold: about max_headers x max_field_size per connection;
- bad requests (and any unhandled error) log one line, at most `burst` per `window_s`, with a
  count of the lines left out; the traceback only when debug logging is on.

This module holds the limits and the log filter; http_server.py enforces them.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from warmgate.probe.state_view import shorten
from warmgate.redact import redact_urls

# Descriptors kept free for what the sidecar itself opens (state files, the lock, its own client
# connections to the model server and the Kubernetes API, logging).
RESERVED_FDS = 64
# The server's logger for refused requests and handler errors (see HttpErrorLog).
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
    """Turns the server's per-request error records into rate-limited single lines."""

    def __init__(self, limit: RateLimit) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # debug records: shown only when debug logging is on
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
    """The logger to hand the HTTP server, with its filter installed; remove the filter when done."""
    logger = logging.getLogger(HTTP_LOGGER)
    log_filter = HttpErrorLog(RateLimit(limits.log_burst, limits.log_window_s))
    logger.addFilter(log_filter)
    return logger, log_filter
