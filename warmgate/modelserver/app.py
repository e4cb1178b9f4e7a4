"""The aiohttp application: Open Inference Protocol v2 REST endpoints, /metrics, JSON errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from warmgate import __version__
from warmgate.modelserver.metrics import ServerMetrics
from warmgate.modelserver.protocol import ProtocolError, decode_request, encode_response, model_metadata
from warmgate.modelserver.runtime.base import InferenceError, Runtime

log = logging.getLogger(__name__)

WORKER_HEADER = "x-warmgate-worker"
SERVER_NAME = "warmgate-modelserver"


@dataclass
class ModelState:
    """What the worker's main coroutine has loaded so far; handlers only read it."""

    runtime: Runtime | None = None
    executor: Executor | None = None
    ready: bool = False
    draining: bool = False
    phase: str = "loading"


@dataclass(frozen=True)
class ServerContext:
    model_name: str
    model_version: str
    state: ModelState
    metrics: ServerMetrics
    worker: str
    max_batch_size: int
    # Whether every worker of the server is ready (multi-worker mode reads the shared slots).
    all_workers_ready: Callable[[], bool] = field(default=lambda: True)
    clock: Callable[[], float] = time.perf_counter


CONTEXT = web.AppKey("context", ServerContext)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(context: ServerContext, max_request_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_request_bytes, middlewares=[_json_errors])
    app[CONTEXT] = context
    app.on_response_prepare.append(_tag_worker)
    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for prefix in (model, version):
        app.router.add_get(prefix, metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_post(prefix + "/infer", infer)
    app.router.add_get("/metrics", make_aiohttp_handler(context.metrics.registry))
    return app


async def _tag_worker(request: web.Request, response: web.StreamResponse) -> None:
    # Every response names its worker, so a client can prove warmup reached all of them.
    response.headers[WORKER_HEADER] = request.app[CONTEXT].worker


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        return _error(str(exc), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own 404/405/413 are plain text; the protocol wants {"error": ...}.
        return _error(exc.reason if exc.text is None else exc.text.strip(), exc.status)


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": []})


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    reason = _not_ready_reason(context)
    if reason is None and not context.all_workers_ready():
        reason = "not every worker is ready yet"
    if reason is not None:
        return web.json_response({"ready": False, "reason": reason}, status=503)
    return web.json_response({"ready": True})


def _not_ready_reason(context: ServerContext) -> str | None:
    state = context.state
    if state.draining:
        return "draining"
    if not state.ready:
        return f"model {context.model_name} is {state.phase}"
    return None


def _check_model(request: web.Request) -> ServerContext:
    context = request.app[CONTEXT]
    name = request.match_info["model"]
    if name != context.model_name:
        raise ProtocolError(f"unknown model {name!r}; this server serves {context.model_name!r}", 404)
    version = request.match_info.get("version")
    if version is not None and version != context.model_version:
        raise ProtocolError(
            f"model {name!r} has no version {version!r}; it has {context.model_version!r}", 404
        )
    return context


async def metadata(request: web.Request) -> web.Response:
    context = _check_model(request)
    runtime = context.state.runtime
    if runtime is None:
        raise ProtocolError(f"model {context.model_name} is {context.state.phase}", 503)
    return web.json_response(model_metadata(runtime.info()))


async def model_ready(request: web.Request) -> web.Response:
    context = _check_model(request)
    is_ready = _not_ready_reason(context) is None
    body = {"name": context.model_name, "ready": is_ready}
    return web.json_response(body, status=200 if is_ready else 503)


async def infer(request: web.Request) -> web.Response:
    context = _check_model(request)
    metrics = context.metrics
    start = context.clock()
    metrics.in_flight.inc()
    status = 500
    try:
        response, batch_size = await _infer(request, context)
        status = response.status
        metrics.request_duration.labels(context.model_name, str(batch_size)).observe(context.clock() - start)
        return response
    except ProtocolError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(context.model_name, str(status)).inc()


async def _infer(request: web.Request, context: ServerContext) -> tuple[web.Response, int]:
    state = context.state
    reason = _not_ready_reason(context)
    if reason is not None or state.runtime is None or state.executor is None:
        raise ProtocolError(f"not ready: {reason}", 503)
    runtime, executor = state.runtime, state.executor
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    info = runtime.info()
    decoded = decode_request(body, info, context.max_batch_size)
    loop = asyncio.get_running_loop()
    started = context.clock()
    try:
        # Off the event loop: health checks and metrics stay responsive while a batch runs.
        results = await loop.run_in_executor(executor, runtime.infer, decoded.inputs)
    except InferenceError as exc:
        log.warning("inference failed: %s", exc)
        raise ProtocolError(f"inference failed: {exc}", 500) from None
    labels = (context.model_name, str(decoded.batch_size))
    context.metrics.inference_duration.labels(*labels).observe(context.clock() - started)
    return web.json_response(encode_response(info, decoded, results)), decoded.batch_size
