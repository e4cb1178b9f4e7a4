"""Is the model server up? The protocol-agnostic part: one HTTP health endpoint and how to ask it,
the wait loop, and the wording of HTTP client errors.

What to ask (which endpoints, which body means "not ready") belongs to each protocol's adapter
(`Adapter.check_ready` / `check_live`); this module only knows how to ask over HTTP and how long
to keep asking, and when to stop asking early: a `Diagnose` hook (the entrypoint's) may name an
unambiguous mistake (the model is unknown, another process owns the port, the server listens
elsewhere), and the wait fails fast once the same mistake has lasted its grace period.

Ready means HTTP 200: servers answer "not ready" with 400 or 503 and their bodies vary, so the
status code is the only portable signal; a protocol whose 200 can still mean "not ready" adds a
body check to its endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from warmgate.protocols.answers import MAX_METADATA_BYTES, InvalidResponse, excerpt, read_capped
from warmgate.protocols.readiness import Endpoint

# Time between readiness polls. Every poll interval is start-up latency added to the pod (the
# server is ready, nobody has noticed yet), so the first polls come fast for a server that is up
# at once, and the rest stay at most a tenth of a second apart for the whole start timeout: a
# loopback GET costs the server microseconds, so a ten-minute load costs 6,000 of them, while
# backing off to a second made a 30 s load noticed up to a second late.
FIRST_POLL_INTERVAL_S = 0.02
MAX_POLL_INTERVAL_S = 0.1
# One poll never waits longer than this, so a hung accept() cannot eat the start budget.
MAX_POLL_TIMEOUT_S = 2.0

# One health check with a time limit: None when healthy, else a one-line reason.
HealthCheck = Callable[[float], Awaitable[str | None]]
# Diagnoses run at most this often while polls fail (each may cost a few requests and a scan of
# the server's processes); after a passing poll, always, before the server is called healthy.
DIAGNOSIS_INTERVAL_S = 0.5
# What a diagnosis reads of an answer body: enough for an error message or a model index.
MAX_DIAGNOSIS_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Mistake:
    """An unambiguous mistake seen while waiting. The wait fails with `reason` once every
    diagnosis for `grace_s` has seen the same `kind` (0: at once)."""

    kind: str
    reason: str
    grace_s: float = 0.0


# Given the last poll's reason (None: the poll passed) and a time limit, a Mistake or None.
Diagnose = Callable[[str | None, float], Awaitable[Mistake | None]]


async def check_endpoint(session: aiohttp.ClientSession, endpoint: Endpoint, timeout_s: float) -> str | None:
    """One request; None when healthy, else a short reason (status and body excerpt, or the error)."""
    try:
        async with session.get(endpoint.url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            body = await read_capped(response, MAX_METADATA_BYTES)
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
    except InvalidResponse as exc:  # a body over the cap: read no further
        return f"GET {endpoint.url}: {exc}"


async def check_endpoints(
    session: aiohttp.ClientSession, endpoints: Sequence[Endpoint], timeout_s: float
) -> str | None:
    """Every endpoint at once, so two (server and model) cost one timeout; the first failure in
    the given order is the reason."""
    reasons = await asyncio.gather(*(check_endpoint(session, endpoint, timeout_s) for endpoint in endpoints))
    return next((reason for reason in reasons if reason is not None), None)


def describe_client_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    return f"{type(exc).__name__}: {exc}"


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, timeout_s: float, body: bytes | None = None
) -> tuple[int, bytes] | str:
    """One request for a diagnosis: (status, body up to MAX_DIAGNOSIS_BODY_BYTES), or a one-line
    reason when there was no answer."""
    try:
        async with session.request(
            method, url, data=body, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            return response.status, await response.content.read(MAX_DIAGNOSIS_BODY_BYTES)
    except TimeoutError:
        return f"{method} {url}: no answer within {timeout_s:g}s"
    except aiohttp.ClientError as exc:
        return f"{method} {url}: {describe_client_error(exc)}"


class ServerNeverHealthy(Exception):
    def __init__(self, waited_s: float, last_error: str) -> None:
        super().__init__(f"server not healthy after {waited_s:.1f}s; last error: {last_error}")
        self.last_error = last_error


class ServerMisconfigured(ServerNeverHealthy):
    """The wait stopped early on an unambiguous mistake (same exit code as never healthy)."""

    def __init__(self, waited_s: float, mistake: Mistake) -> None:
        Exception.__init__(self, f"server not usable after {waited_s:.1f}s: {mistake.reason}")
        self.last_error = mistake.reason
        self.mistake = mistake


async def wait_until_healthy(
    check: HealthCheck,
    timeout_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_poll: Callable[[int, str | None], None] | None = None,
    diagnose: Diagnose | None = None,
) -> int:
    """Poll `check` until it passes; returns the number of polls. Raises ServerNeverHealthy, or
    ServerMisconfigured when `diagnose` names the same mistake for its grace period (or any
    mistake right after a passing poll: whatever passed is not the server warmgate started)."""
    start = clock()
    deadline = start + timeout_s
    interval = FIRST_POLL_INTERVAL_S
    polls = 0
    last_error = "no poll completed"
    mistakes = _MistakeTracker()
    next_diagnosis = start
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            if mistakes.current is not None:
                raise ServerMisconfigured(clock() - start, mistakes.current)
            raise ServerNeverHealthy(clock() - start, last_error)
        polls += 1
        reason = await check(min(MAX_POLL_TIMEOUT_S, remaining))
        if on_poll is not None:
            on_poll(polls, reason)
        if reason is None:
            if diagnose is not None:
                mistake = await diagnose(None, MAX_POLL_TIMEOUT_S)
                if mistake is not None:
                    raise ServerMisconfigured(clock() - start, mistake)
            return polls
        last_error = reason
        pause = min(interval, max(0.0, deadline - clock()))
        if diagnose is not None and clock() >= next_diagnosis:
            # Beside the pause, not after it: the polling cadence stays what it was.
            mistake, _ = await asyncio.gather(
                diagnose(reason, min(MAX_POLL_TIMEOUT_S, max(remaining, 0.1))), sleep(pause)
            )
            next_diagnosis = clock() + DIAGNOSIS_INTERVAL_S
            if mistakes.seen(mistake, clock()):
                assert mistake is not None
                raise ServerMisconfigured(clock() - start, mistake)
        else:
            await sleep(pause)
        interval = min(interval * 2, MAX_POLL_INTERVAL_S)


class _MistakeTracker:
    """How long the same kind of mistake has been seen without a break."""

    def __init__(self) -> None:
        self.current: Mistake | None = None
        self._since = 0.0

    def seen(self, mistake: Mistake | None, now: float) -> bool:
        """Record one diagnosis; True when its mistake has now lasted its grace period."""
        if mistake is None:
            self.current = None
            return False
        if self.current is None or self.current.kind != mistake.kind:
            self._since = now
        self.current = mistake
        return now - self._since >= mistake.grace_s
