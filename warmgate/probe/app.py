"""The sidecar's HTTP app: /startupz, /readyz, /livez, /healthz and /metrics.

Status codes are what the kubelet acts on (200 pass, 503 fail); the small JSON body is for the
operator with curl. All state lives in typed AppKeys of one application; nothing is global.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from warmgate.config import Config
from warmgate.probe.evaluator import Evaluator, Verdict
from warmgate.probe.metrics import MetricsInput, ProbeMetrics, build_registry
from warmgate.probe.server_check import CachedCheck, ModelServerClient
from warmgate.probe.shapes import UnwarmedShapes
from warmgate.probe.state_view import StateView
from warmgate.protocols import Adapter, make_adapter

# Paths as kube-apiserver names them. /healthz is the sidecar's own health (200 while it serves),
# for the sidecar container's own probes: they must never wait for the warmup.
ENDPOINTS = ("/startupz", "/readyz", "/livez", "/healthz", "/metrics")
# Every other path is counted under one label so a scanner cannot grow the metric's cardinality.
OTHER_ENDPOINT = "other"
NO_STORE = {"Cache-Control": "no-store"}
# The model server's metrics page is read up to this size for its shape counter.
SERVER_METRICS_MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class ProbeSettings:
    state_dir: Path
    # The server's protocol: it knows which endpoints mean ready and alive.
    protocol: Adapter
    check_timeout_s: float
    check_cache_s: float
    live_failures: int
    # The model server's Prometheus page, read for the shapes it served (shapes.py); None: not read.
    server_metrics_url: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> ProbeSettings:
        probe = config.probe
        server = config.server
        # `warmgate serve` (protocol oip) serves /metrics beside its API; other servers' pages
        # carry no shapes, and a missing page only means no unwarmed-shape samples.
        metrics_url = None
        if server.protocol == "oip" and server.url.startswith(("http://", "https://")):
            metrics_url = server.url.rstrip("/") + "/metrics"
        return cls(
            state_dir=config.state_dir,
            protocol=make_adapter(config.server),
            check_timeout_s=probe.check_timeout_s,
            check_cache_s=probe.check_cache_s,
            live_failures=probe.live_failures,
            server_metrics_url=metrics_url,
        )


@dataclass(frozen=True)
class ExtraRoute:
    """A GET route that a program composing the probe adds beside its own endpoints (the
    sidecar's /drain); it is counted in the request metrics under its own path."""

    path: str
    handler: Handler


@dataclass(frozen=True)
class Probe:
    """The assembled parts, built once per process (or per test)."""

    evaluator: Evaluator
    client: ModelServerClient
    registry: CollectorRegistry
    metrics: ProbeMetrics
    extra_routes: tuple[ExtraRoute, ...] = ()
    unwarmed: UnwarmedShapes | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (*ENDPOINTS, *(route.path for route in self.extra_routes))


EVALUATOR = web.AppKey("evaluator", Evaluator)
CLIENT = web.AppKey("client", ModelServerClient)
REGISTRY = web.AppKey("registry", CollectorRegistry)
PROBE_METRICS = web.AppKey("probe_metrics", ProbeMetrics)
ENDPOINT_PATHS = web.AppKey("endpoint_paths", frozenset)


def build_probe(
    settings: ProbeSettings,
    *,
    clock: Callable[[], float] = time.monotonic,
    extra_routes: Sequence[ExtraRoute] = (),
) -> Probe:
    protocol = settings.protocol
    client = ModelServerClient(settings.check_timeout_s, protocol)

    async def check_ready() -> str | None:
        return await client.check(protocol.check_ready)

    async def check_live() -> str | None:
        return await client.check(protocol.check_live)

    evaluator = Evaluator(
        StateView(settings.state_dir),
        CachedCheck(check_ready, cache_s=settings.check_cache_s, clock=clock),
        CachedCheck(check_live, cache_s=settings.check_cache_s, clock=clock),
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
            return await client.fetch_text(metrics_url, SERVER_METRICS_MAX_BYTES)

        unwarmed = UnwarmedShapes(server_page, lambda: metrics_input().snapshot.evidence, clock=clock)
        registry.register(unwarmed)
    return Probe(evaluator, client, registry, metrics, extra, unwarmed)


def create_app(probe: Probe) -> web.Application:
    app = web.Application(middlewares=[_count_requests])
    app[EVALUATOR] = probe.evaluator
    app[CLIENT] = probe.client
    app[REGISTRY] = probe.registry
    app[PROBE_METRICS] = probe.metrics
    app[ENDPOINT_PATHS] = frozenset(probe.endpoints)
    app.cleanup_ctx.append(_model_server_client)
    app.router.add_get("/startupz", _startupz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/livez", _livez)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics_handler(probe.registry, probe.unwarmed))
    for route in probe.extra_routes:
        app.router.add_get(route.path, route.handler)
    return app


async def _model_server_client(app: web.Application) -> AsyncIterator[None]:
    client = app[CLIENT]
    await client.start()
    yield
    evaluator = app[EVALUATOR]
    await evaluator.ready_check.close()
    await evaluator.live_check.close()
    await client.close()


def _answer(verdict: Verdict) -> web.Response:
    return web.json_response(verdict.body(), status=200 if verdict.ok else 503, headers=NO_STORE)


async def _startupz(request: web.Request) -> web.Response:
    return _answer(request.app[EVALUATOR].startup())


async def _readyz(request: web.Request) -> web.Response:
    return _answer(await request.app[EVALUATOR].readiness())


async def _livez(request: web.Request) -> web.Response:
    return _answer(await request.app[EVALUATOR].liveness())


async def _healthz(request: web.Request) -> web.Response:
    if request.app[EVALUATOR].shutting_down:
        body = {"ok": False, "reason": "probe is shutting down"}
        return web.json_response(body, status=503, headers=NO_STORE)
    return web.json_response({"ok": True, "reason": "probe serving"}, headers=NO_STORE)


def _metrics_handler(registry: CollectorRegistry, unwarmed: UnwarmedShapes | None = None) -> Handler:
    # Exposition is small: compressing it would cost the sidecar more CPU than it saves.
    export = make_aiohttp_handler(registry, disable_compression=True)

    async def metrics(request: web.Request) -> web.StreamResponse:
        evaluator = request.app[EVALUATOR]
        if evaluator.shutting_down:
            return web.Response(status=503, text="probe is shutting down\n", headers=NO_STORE)
        # Refresh warmgate_ready; the server check is cached and shared, so a scrape costs little.
        await evaluator.readiness()
        if unwarmed is not None:
            await unwarmed.refresh()
        return await export(request)

    return metrics


@web.middleware
async def _count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    endpoint = request.path if request.path in request.app[ENDPOINT_PATHS] else OTHER_ENDPOINT
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[PROBE_METRICS].observe(endpoint, status, time.perf_counter() - started)
