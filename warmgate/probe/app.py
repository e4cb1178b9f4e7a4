"""The sidecar's HTTP app: /startupz, /readyz, /livez, /healthz and /metrics.

Status codes are what the kubelet acts on (200 pass, 503 fail); the small JSON body is for the
operator with curl. The routes are plain handlers of http_server.py's lean server (no aiohttp in
the probe's server: memory); all state lives in the ProbeApp built per process; nothing is global.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from warmgate.probe.evaluator import Evaluator, Verdict
from warmgate.probe.http_guard import HttpLimits
from warmgate.probe.http_server import Handler, HttpServer, Request, Response
from warmgate.probe.metrics import MetricsInput, ProbeMetrics, build_registry
from warmgate.probe.server_check import CachedCheck, ServerCheck
from warmgate.probe.settings import ProbeSettings
from warmgate.probe.shapes import UnwarmedShapes
from warmgate.probe.state_view import StateView

# Paths as kube-apiserver names them. /healthz is the sidecar's own health (200 while it serves),
# for the sidecar container's own probes: they must never wait for the warmup.
ENDPOINTS = ("/startupz", "/readyz", "/livez", "/healthz", "/metrics")
# Every other path is counted under one label so a scanner cannot grow the metric's cardinality.
OTHER_ENDPOINT = "other"
NO_STORE = (("Cache-Control", "no-store"),)
# The model server's metrics page is read up to this size for its shape counter.
SERVER_METRICS_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class ExtraRoute:
    """A GET (and HEAD) route that a program composing the probe adds beside its own endpoints
    (the sidecar's /drain); it is counted in the request metrics under its own path."""

    path: str
    handler: Callable[[], Awaitable[Response]]


@dataclass(frozen=True)
class Probe:
    """The assembled parts, built once per process (or per test)."""

    evaluator: Evaluator
    # The model server's check (closed with the app).
    check: ServerCheck
    registry: CollectorRegistry
    metrics: ProbeMetrics
    extra_routes: tuple[ExtraRoute, ...] = ()
    unwarmed: UnwarmedShapes | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (*ENDPOINTS, *(route.path for route in self.extra_routes))


def build_probe(
    settings: ProbeSettings,
    check: ServerCheck,
    *,
    clock: Callable[[], float] = time.monotonic,
    extra_routes: Sequence[ExtraRoute] = (),
) -> Probe:
    evaluator = Evaluator(
        StateView(settings.state_dir),
        CachedCheck(check.ready, cache_s=settings.check_cache_s, clock=clock),
        CachedCheck(check.live, cache_s=settings.check_cache_s, clock=clock),
        live_failures=settings.live_failures,
    )

    def metrics_input() -> MetricsInput:
        last = evaluator.last_readiness
        if last is not None and last.snapshot is not None:
            return MetricsInput(last.snapshot, last.ok)
        return MetricsInput(evaluator.view.snapshot(), False)

    extra = tuple(extra_routes)
    paths = (*ENDPOINTS, *(route.path for route in extra))
    registry, metrics = build_registry(metrics_input, (*paths, OTHER_ENDPOINT))
    unwarmed = None
    metrics_url = settings.server_metrics_url
    if metrics_url is not None:

        async def server_page() -> str | None:
            return await check.fetch_text(metrics_url, SERVER_METRICS_MAX_BYTES)

        unwarmed = UnwarmedShapes(server_page, lambda: metrics_input().snapshot.evidence, clock=clock)
        registry.register(unwarmed)
    return Probe(evaluator, check, registry, metrics, extra, unwarmed)


class ProbeApp:
    """The probe's routes, its request metrics and the lifetime of its model-server check."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        evaluator = probe.evaluator
        self._endpoints = frozenset(probe.endpoints)

        async def startupz(request: Request) -> Response:
            return _answer(evaluator.startup())

        async def readyz(request: Request) -> Response:
            return _answer(await evaluator.readiness())

        async def livez(request: Request) -> Response:
            return _answer(await evaluator.liveness())

        async def healthz(request: Request) -> Response:
            if evaluator.shutting_down:
                return Response.json({"ok": False, "reason": "probe is shutting down"}, 503, NO_STORE)
            return Response.json({"ok": True, "reason": "probe serving"}, 200, NO_STORE)

        self.routes: dict[str, Handler] = {
            "/startupz": startupz,
            "/readyz": readyz,
            "/livez": livez,
            "/healthz": healthz,
            "/metrics": _metrics_handler(probe),
        }
        for route in probe.extra_routes:
            self.routes[route.path] = _extra(route)

    def observe(self, path: str, status: int, seconds: float) -> None:
        # Every other path under one label: a scanner cannot grow the metric's cardinality.
        endpoint = path if path in self._endpoints else OTHER_ENDPOINT
        self.probe.metrics.observe(endpoint, status, seconds)

    def server(
        self, limits: HttpLimits, logger: logging.Logger, *, on_evict: Callable[[int], None] | None = None
    ) -> HttpServer:
        return HttpServer(self.routes, limits, logger, observe=self.observe, on_evict=on_evict)

    async def close(self) -> None:
        evaluator = self.probe.evaluator
        await evaluator.ready_check.close()
        await evaluator.live_check.close()
        await self.probe.check.close()


def create_app(probe: Probe) -> ProbeApp:
    return ProbeApp(probe)


def _answer(verdict: Verdict) -> Response:
    return Response.json(verdict.body(), 200 if verdict.ok else 503, NO_STORE)


def _extra(route: ExtraRoute) -> Handler:
    async def handle(request: Request) -> Response:
        return await route.handler()

    return handle


def _metrics_handler(probe: Probe) -> Handler:
    evaluator, registry, unwarmed = probe.evaluator, probe.registry, probe.unwarmed

    async def metrics(request: Request) -> Response:
        if evaluator.shutting_down:
            return Response(503, b"probe is shutting down\n", headers=NO_STORE)
        # Refresh warmgate_ready; the server check is cached and shared, so a scrape costs little.
        await evaluator.readiness()
        if unwarmed is not None:
            await unwarmed.refresh()
        # Text or OpenMetrics as the scraper asks; never compressed: the exposition is small, and
        # compressing it would cost the sidecar more CPU than it saves.
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        names = parse_qs(request.query).get("name[]")
        source = registry.restricted_registry(names) if names else registry
        return Response(200, encoder(source), content_type)

    return metrics
