"""The probe's own check of the model server: cached, single-flight, and bounded in time.

The kubelet, Prometheus and the readiness-gate loop may all ask at once, and a saturated model
server answers its health endpoint slowly. So one check runs at a time and every concurrent caller
shares its result (as Knative's queue-proxy does), a result is reused for a short interval, and a
check never outlives its timeout, which is kept well under the kubelet's 1 s default.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from warmgate.protocols import Adapter

# The probe talks to one model server on the pod network: a handful of pooled connections is
# plenty, and a bounded pool keeps a stuck server from costing the sidecar file descriptors.
CONNECTION_LIMIT = 8

# A protocol's own check (its adapter's check_ready or check_live): session, timeout -> reason.
ServerProbe = Callable[[aiohttp.ClientSession, float], Awaitable[str | None]]


@dataclass(frozen=True)
class CheckResult:
    healthy: bool
    # None when healthy, else why not (one line).
    reason: str | None
    # Monotonic time the check finished; results are reused until it is `cache_s` old.
    checked_at: float
    duration_s: float


class ModelServerClient:
    """Owns the HTTP session to the model server, and the protocol's own transport where it has
    one (a gRPC channel); opened and closed with the probe's app."""

    def __init__(self, timeout_s: float, protocol: Adapter | None = None) -> None:
        self.timeout_s = timeout_s
        self.protocol = protocol
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.protocol is not None:
            await self.protocol.aclose()

    async def fetch_text(self, url: str, max_bytes: int) -> str | None:
        """GET `url` (the server's /metrics) within the check timeout; None unless a 200 whose text
        fits `max_bytes`."""
        if self._session is None:
            return None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self._session.get(url, timeout=timeout) as response:
                body = await response.content.read(max_bytes + 1)
                if response.status != 200 or len(body) > max_bytes:
                    return None
                return body.decode("utf-8", errors="replace")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    async def check(self, probe: ServerProbe) -> str | None:
        """None when the protocol's check passes in time, else its reason. The protocol asks its
        endpoints concurrently, so two (Open Inference Protocol: server and model) cost one timeout."""
        if self._session is None:
            return "probe is not started"
        return await probe(self._session, self.timeout_s)


class CachedCheck:
    """A check that runs at most once per `cache_s`, shared by all concurrent callers."""

    def __init__(
        self,
        check: Callable[[], Awaitable[str | None]],
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.cache_s = cache_s
        self._clock = clock
        self._inflight: asyncio.Task[CheckResult] | None = None
        self.last: CheckResult | None = None
        # Fresh results only: a cached answer served twice is not two failures.
        self.consecutive_failures = 0
        self.runs = 0

    async def result(self) -> CheckResult:
        last = self.last
        if last is not None and self._clock() - last.checked_at < self.cache_s:
            return last
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._run(), name="model-server-check")
        # Shielded: a caller that gives up (client disconnected) must not cancel the shared check.
        return await asyncio.shield(self._inflight)

    async def _run(self) -> CheckResult:
        started = self._clock()
        try:
            reason = await self._check()
        except Exception as exc:  # a bug or an odd error is an unhealthy answer, never a 500
            reason = f"check failed: {type(exc).__name__}: {exc}"
        finally:
            self._inflight = None
        finished = self._clock()
        result = CheckResult(reason is None, reason, finished, finished - started)
        self.runs += 1
        self.consecutive_failures = 0 if result.healthy else self.consecutive_failures + 1
        self.last = result
        return result

    async def close(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
