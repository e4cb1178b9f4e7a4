"""Is the model server up? Protocol-specific readiness and liveness checks, and the wait loop.

Ready means HTTP 200 on every readiness endpoint: servers answer "not ready" with 400 or 503 and
their bodies vary, so the status code is the only portable signal. Open Inference Protocol needs
both the server's and the model's endpoint, because KServe's server-ready is always true.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from warmgate.config import ServerConfig

# Time between readiness polls. Every poll interval is start-up latency added to the pod (the
# server is ready, nobody has noticed yet), so polls are frequent while a fast server is likely to
# come up, and back off to a ceiling for long model loads, where a second is a small share and a
# ten-minute load then costs a few hundred requests rather than tens of thousands.
FIRST_POLL_INTERVAL_S = 0.02
FAST_POLL_INTERVAL_S = 0.1
FAST_POLL_WINDOW_S = 10.0
MAX_POLL_INTERVAL_S = 1.0
# One poll never waits longer than this, so a hung accept() cannot eat the start budget.
MAX_POLL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Endpoint:
    url: str
    # Extra check of a 200 body; returns a reason when the body says "not ready".
    body_check: Callable[[bytes], str | None] | None = None


def oip_model_path(server: ServerConfig) -> str:
    path = f"/v2/models/{quote(server.model, safe='')}"
    if server.model_version:
        path += f"/versions/{quote(server.model_version, safe='')}"
    return path


def _tfserving_available(body: bytes) -> str | None:
    try:
        versions = json.loads(body).get("model_version_status", [])
    except (ValueError, AttributeError):
        return "model status is not JSON"
    if any(v.get("state") == "AVAILABLE" for v in versions if isinstance(v, dict)):
        return None
    states = ",".join(str(v.get("state")) for v in versions if isinstance(v, dict)) or "none"
    return f"no AVAILABLE model version (states: {states})"


def readiness_endpoints(server: ServerConfig) -> list[Endpoint]:
    base = server.url
    if server.health_path is not None:
        return [Endpoint(base + server.health_path)]
    if server.protocol == "oip":
        return [Endpoint(base + "/v2/health/ready"), Endpoint(base + oip_model_path(server) + "/ready")]
    if server.protocol == "tfserving":
        return [Endpoint(f"{base}/v1/models/{quote(server.model, safe='')}", _tfserving_available)]
    if server.protocol == "torchserve":
        return [Endpoint(base + "/ping")]
    raise ValueError(f"protocol {server.protocol} needs server.health_path")  # prevented by config


def liveness_endpoint(server: ServerConfig) -> Endpoint:
    base = server.url
    if server.live_path is not None:
        return Endpoint(base + server.live_path)
    if server.protocol == "oip":
        return Endpoint(base + "/v2/health/live")
    return readiness_endpoints(server)[0]


async def check_endpoint(session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float) -> str | None:
    """One request; None when healthy, else a short reason (status and body excerpt, or the error)."""
    try:
        async with session.get(endpoint.url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            body = await response.read()
            if response.status != 200:
                return f"GET {endpoint.url}: HTTP {response.status} {excerpt(body)}".rstrip()
            if endpoint.body_check is not None:
                reason = endpoint.body_check(body)
                if reason is not None:
                    return f"GET {endpoint.url}: {reason}"
            return None
    except TimeoutError:
        return f"GET {endpoint.url}: no answer within {timeout_s:g}s"
    except aiohttp.ClientError as exc:
        return f"GET {endpoint.url}: {describe_client_error(exc)}"


def describe_client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    return f"{type(exc).__name__}: {exc}"


def excerpt(body: bytes, limit: int = 120) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ServerNeverHealthy(Exception):
    def __init__(self, waited_s: float, last_error: str) -> None:
        super().__init__(f"server not healthy after {waited_s:.1f}s; last error: {last_error}")
        self.last_error = last_error


async def wait_until_healthy(
    session: aiohttp.ClientSession,
    endpoints: list[Endpoint],
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_poll: Callable[[int, str | None], None] | None = None,
) -> int:
    """Poll until every endpoint answers 200; returns the number of polls. Raises ServerNeverHealthy."""
    start = clock()
    deadline = start + timeout_s
    interval = FIRST_POLL_INTERVAL_S
    polls = 0
    last_error = "no poll completed"
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise ServerNeverHealthy(clock() - start, last_error)
        polls += 1
        reason: str | None = None
        for endpoint in endpoints:
            reason = await check_endpoint(session, endpoint, min(MAX_POLL_TIMEOUT_S, remaining))
            if reason is not None:
                break
        if on_poll is not None:
            on_poll(polls, reason)
        if reason is None:
            return polls
        last_error = reason
        await sleep(min(interval, max(0.0, deadline - clock())))
        ceiling = FAST_POLL_INTERVAL_S if clock() - start < FAST_POLL_WINDOW_S else MAX_POLL_INTERVAL_S
        interval = min(interval * 2, ceiling)
