"""The probe's own check of the model server: cached, single-flight, and bounded in time.

The kubelet, Prometheus and the readiness-gate loop may all ask at once, and a saturated model
server answers its health endpoint slowly. So one check runs at a time and every concurrent caller
shares its result (as Knative's queue-proxy does), a result is reused for a short interval, and a
check never outlives its timeout, which is kept well under the kubelet's 1 s default.

The checks themselves are the protocol's health endpoints (protocols/readiness.py), asked over
the lean HTTP/1.1 client: the probe's serving process loads no aiohttp. A protocol that checks
over its own transport (gRPC) is asked through its adapter instead (probe/planning.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from warmgate.protocols._http1 import Answer, Http1Client, Http1Error, serialise
from warmgate.protocols.answers import MAX_METADATA_BYTES, InvalidResponse, excerpt
from warmgate.protocols.readiness import Endpoint


class ServerCheck(Protocol):
    """Asks the model server whether it is ready and alive; each answer is None when it is, else
    a one-line reason. Never raises for anything the server does."""

    async def ready(self) -> str | None: ...

    async def live(self) -> str | None: ...

    async def fetch_text(self, url: str, max_bytes: int) -> str | None:
        """GET `url` (the server's /metrics) within the check timeout; None unless a 200 whose text
        fits `max_bytes`."""

    async def close(self) -> None: ...


class HttpServerCheck:
    """The protocol's health endpoints over keep-alive HTTP/1.1 connections. All the readiness
    endpoints are asked at once, so two (Open Inference Protocol: server and model) cost one
    timeout; the first failure in their order is the reason."""

    def __init__(self, ready: Sequence[Endpoint], live: Endpoint, timeout_s: float) -> None:
        self.ready_endpoints = tuple(ready)
        self.live_endpoint = live
        self.timeout_s = timeout_s
        # Health answers are a few kilobytes, the server's metrics page a few hundred; a larger
        # answer is cut off rather than read (the cap of the aiohttp checks before).
        self._client = Http1Client(max_body_bytes=MAX_METADATA_BYTES)

    async def ready(self) -> str | None:
        reasons = await asyncio.gather(*(self._check(endpoint) for endpoint in self.ready_endpoints))
        return next((reason for reason in reasons if reason is not None), None)

    async def live(self) -> str | None:
        return await self._check(self.live_endpoint)

    async def fetch_text(self, url: str, max_bytes: int) -> str | None:
        answer = await self._get(url)
        if isinstance(answer, str) or answer.status != 200 or len(answer.body) > max_bytes:
            return None
        return answer.body.decode("utf-8", errors="replace")

    async def close(self) -> None:
        await self._client.close()

    async def _check(self, endpoint: Endpoint) -> str | None:
        url = endpoint.url
        answer = await self._get(url)
        if isinstance(answer, str):
            return answer
        if answer.status != 200:
            if answer.location is not None and 300 <= answer.status < 400:
                # One round trip, like the kubelet's own httpGet would not hide a redirect either.
                return (
                    f"GET {url}: HTTP {answer.status} redirects to {excerpt(answer.location.encode())}; "
                    "the probe does not follow redirects: set server.health_path (or server.live_path) "
                    "to where it points"
                )
            return f"GET {url}: HTTP {answer.status} {excerpt(answer.body)}".rstrip()
        if endpoint.body_check is not None:
            reason = endpoint.body_check(answer.body)
            if reason is not None:
                return f"GET {url}: {reason}"
        return None

    async def _get(self, url: str) -> Answer | str:
        """The answer, or the one-line reason there is none."""
        wire = serialise("GET", url, {}, None, https=True, credentials=True)
        if wire is None:
            return f"GET {url}: not a URL the probe can ask (characters that need escaping?)"
        try:
            answer, _sent_at = await self._client.request(wire, self.timeout_s)
        except asyncio.TimeoutError:
            return f"GET {url}: no answer within {self.timeout_s:g}s"
        except (Http1Error, InvalidResponse) as exc:
            return f"GET {url}: {exc}"
        return answer


@dataclass(frozen=True)
class CheckResult:
    healthy: bool
    # None when healthy, else why not (one line).
    reason: str | None
    # Monotonic time the check finished; results are reused until it is `cache_s` old.
    checked_at: float
    duration_s: float


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
