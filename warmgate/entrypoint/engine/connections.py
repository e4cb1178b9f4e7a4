"""The run's aiohttp session, sized so that requests never queue inside it.

It carries health checks, metadata, LLM streams and every request to an https:// server; the
timed requests to a plain http:// server go over the adapter's own keep-alive connections
(protocols/_http1.py), which open one per request in flight and so never queue either.

aiohttp's connector opens at most 100 connections by default. The load test's closed loop can
have `load_test.concurrency` requests in flight and the open loop up to `MAX_IN_FLIGHT`: above
the pool's size the extra requests would wait inside the client for a free connection, and the
latency the gate judges would be the client's queue, not the server. Light on purpose (aiohttp
and the config only): run.py builds the session right after spawning the server.
"""

from __future__ import annotations

import aiohttp

from warmgate.config import Config

# Open loop: at most this many requests in flight. Beyond it the dispatcher waits, and the wait
# is still charged to the requests (latency counts from the intended send time), so a stalled
# server shows up as latency instead of as unbounded memory in the entrypoint.
MAX_IN_FLIGHT = 1024
# Never fewer connections than aiohttp's own default: health polls and warmup never need more,
# and sizing down would change nothing but their timing.
MIN_CONNECTIONS = 100
# Kept free for the readiness watch (readiness.py; OIP asks two endpoints at once): with the pool
# exactly as large as the stage's in-flight requests, a readiness check would queue behind them
# and a slow model under load would look like lost readiness.
READINESS_CONNECTIONS = 2


def warmup_concurrency(config: Config) -> int:
    """Requests the warm stage sends together: one per server worker unless configured."""
    return config.warmup.concurrency or config.server.workers or 1


def load_in_flight(config: Config) -> int:
    """The most load-test requests that can be in flight at once."""
    load = config.load_test
    return load.concurrency if load.mode == "closed" else MAX_IN_FLIGHT


def connection_limit(config: Config) -> int:
    stage = max(warmup_concurrency(config), load_in_flight(config))
    return max(MIN_CONNECTIONS, stage + READINESS_CONNECTIONS)


def client_session(config: Config) -> aiohttp.ClientSession:
    """The session every request of a run goes through (health polls, warmup, load test).

    Without a cookie jar: every request must be the prepared one, whatever a server set earlier
    (a session cookie would make the load test something the warmup was not), and skipping the
    jar's bookkeeping on every request and answer is less of the generator's CPU taken from the
    server it measures."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connection_limit(config)),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
