"""The aiohttp application: Open Inference Protocol v2 REST endpoints, /metrics, JSON errors.

A translation of HTTP onto the data plane (dataplane.py), which the gRPC service shares."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from warmgate import __version__
from warmgate.modelserver.dataplane import (
    EXTENSIONS,
    SERVER_NAME,
    WORKER_HEADER,
    ModelState,
    ServerContext,
    check_model,
    counted,
    loaded_runtime,
    not_ready_reason,
    ready_runtime,
    run_inference,
    server_not_ready_reason,
)
from warmgate.modelserver.protocol import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    InferResponse,
    ProtocolError,
    decode_request,
    encode_response,
    model_metadata,
    split_body,
)

# Re-exported: tests and callers built the app from here before the data plane was split out.
__all__ = ["CONTEXT", "SERVER_NAME", "WORKER_HEADER", "ModelState", "ServerContext", "build_app"]

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
    app.router.add_get(STARTUP_PATH, startup)
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
    return web.json_response({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


# This worker's start-up trace (trace.py has the schema); warmgate's engine reads it after the gate.
STARTUP_PATH = "/v2/warmgate/startup"


async def startup(request: web.Request) -> web.Response:
    trace = request.app[CONTEXT].trace
    if trace is None:
        return _error("this worker keeps no start-up trace", 404)
    return web.json_response(trace.document())


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    reason = server_not_ready_reason(request.app[CONTEXT])
    if reason is not None:
        return web.json_response({"ready": False, "reason": reason}, status=503)
    return web.json_response({"ready": True})


def _check_model(request: web.Request) -> ServerContext:
    context = request.app[CONTEXT]
    check_model(context, request.match_info["model"], request.match_info.get("version"))
    return context


async def metadata(request: web.Request) -> web.Response:
    context = _check_model(request)
    return web.json_response(model_metadata(loaded_runtime(context).info()))


async def model_ready(request: web.Request) -> web.Response:
    context = _check_model(request)
    is_ready = not_ready_reason(context) is None
    body = {"name": context.model_name, "ready": is_ready}
    return web.json_response(body, status=200 if is_ready else 503)


async def infer(request: web.Request) -> web.Response:
    context = _check_model(request)
    with counted(context) as outcome:
        try:
            runtime, executor = ready_runtime(context)
            raw = await request.read()
        except web.HTTPException as exc:
            outcome.status = exc.status
            raise
        json_part, binary = split_body(raw, request.headers.get(HEADER_LENGTH))
        try:
            body = json.loads(json_part)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"request body is not valid JSON: {exc}") from None
        info = runtime.info()
        decoded = decode_request(body, info, context.max_batch_size, binary)
        results = await run_inference(context, runtime, executor, decoded)
        response = _response(encode_response(info, decoded, results))
        outcome.status, outcome.batch_size = response.status, decoded.batch_size
        return response


def _response(encoded: InferResponse) -> web.Response:
    if not encoded.binary:
        return web.json_response(encoded.body)
    header = json.dumps(encoded.body).encode()
    return web.Response(
        body=b"".join((header, *encoded.binary)),
        headers={HEADER_LENGTH: str(len(header))},
        content_type=BINARY_CONTENT_TYPE,
    )
