"""One worker: serve HTTP (and gRPC when asked) at once (live, not ready), load and warm the model,
then serve inference until TERM, then drain: stop accepting on both, finish in-flight requests and
calls within the graceful timeout."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from warmgate.modelserver import runtime as runtimes
from warmgate.modelserver.app import build_app
from warmgate.modelserver.dataplane import ModelState, ServerContext
from warmgate.modelserver.metrics import ServerMetrics
from warmgate.modelserver.options import ServeOptions
from warmgate.modelserver.runtime.base import ModelInfo, ModelLoadError, Runtime
from warmgate.modelserver.sockets import GrpcListen
from warmgate.modelserver.trace import StartupTrace
from warmgate.modelserver.warmup import warm_up

if TYPE_CHECKING:
    from warmgate.modelserver.grpc_service import GrpcFrontEnd

log = logging.getLogger(__name__)

# Exit codes of a worker (and of a single-process server).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MODEL_ERROR = 2


async def serve(
    options: ServeOptions,
    sock: socket.socket,
    announce: Callable[[ModelInfo, int | None], None],
    *,
    grpc_listen: GrpcListen | None = None,
    prepared: Runtime | None = None,
    all_workers_ready: Callable[[], bool] = lambda: True,
    mark_ready: Callable[[bool], None] = lambda ready: None,
    metrics_dir: Path | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers only record the request; this coroutine does the draining.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    spec = options.spec
    metrics = ServerMetrics(
        CollectorRegistry(auto_describe=True), worker=str(os.getpid()), multiprocess_dir=metrics_dir
    )
    state = ModelState()
    trace = StartupTrace(worker=str(os.getpid()))
    context = ServerContext(
        model_name=spec.model_name,
        model_version=spec.model_version,
        state=state,
        metrics=metrics,
        worker=str(os.getpid()),
        max_batch_size=options.max_batch_size,
        all_workers_ready=all_workers_ready,
        trace=trace,
    )
    runner = web.AppRunner(
        build_app(context, options.max_request_bytes),
        shutdown_timeout=options.graceful_timeout_s,
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        grpc_front = await _start_grpc(context, grpc_listen, options.max_request_bytes)
    except BaseException:
        await runner.cleanup()
        raise
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
    code = EXIT_OK
    try:
        loading = loop.run_in_executor(loader, _load_and_warm, options, prepared, state, metrics, trace)
        stopped = asyncio.ensure_future(_until(stop))
        await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            code = _load_outcome(loading)
            if code == EXIT_OK:
                runtime = state.runtime
                assert runtime is not None
                state.executor = ThreadPoolExecutor(runtime.concurrency, thread_name_prefix="infer")
                state.ready = True
                state.phase = "ready"
                metrics.ready.set(1)
                mark_ready(True)
                announce(runtime.info(), None if grpc_front is None else grpc_front.port)
                await stopped
        else:
            log.info("stopping before the model finished loading")
            loading.cancel()
        stopped.cancel()
    finally:
        state.draining = True
        state.phase = "draining"
        mark_ready(False)
        metrics.ready.set(0)
        started = time.monotonic()
        # Each closes its listening socket first, then waits for in-flight requests (up to the
        # graceful timeout), then closes connections.
        stopping = [runner.cleanup()]
        if grpc_front is not None:
            stopping.append(grpc_front.stop(options.graceful_timeout_s))
        await asyncio.gather(*stopping)
        if state.executor is not None:
            state.executor.shutdown(wait=False, cancel_futures=True)
        loader.shutdown(wait=False, cancel_futures=True)
        if state.runtime is not None:
            state.runtime.close()
        log.info("worker %d stopped (drained in %.2fs)", os.getpid(), time.monotonic() - started)
    return code


async def _start_grpc(
    context: ServerContext, listen: GrpcListen | None, max_request_bytes: int
) -> GrpcFrontEnd | None:
    if listen is None:
        return None
    # Imported here: a server without --grpc-port never loads grpc.
    from warmgate.modelserver import grpc_service

    return await grpc_service.start(context, listen, max_request_bytes)


async def _until(event: asyncio.Event) -> None:
    await event.wait()


def _load_and_warm(
    options: ServeOptions,
    prepared: Runtime | None,
    state: ModelState,
    metrics: ServerMetrics,
    trace: StartupTrace,
) -> None:
    spec = options.spec
    started = time.perf_counter()
    # The runtime records its own sub-steps (weights read, device init, ...) into the trace.
    detail = "loaded before fork, shared" if prepared is not None else spec.kind
    with trace.active(), trace.step("runtime load", detail):
        runtime = runtimes.load(spec, prepared)
    load_s = time.perf_counter() - started
    metrics.load_seconds.labels(spec.model_name).set(load_s)
    info = runtime.info()
    log.info(
        "worker %d loaded %s in %.3fs (runtime %s, device %s, providers %s, threads %d, concurrency %d)",
        os.getpid(),
        spec.model_path,
        load_s,
        spec.kind,
        info.device,
        ",".join(info.providers),
        spec.threads,
        runtime.concurrency,
    )
    if options.warmup_batch_sizes:
        state.phase = "warming"
        started = time.perf_counter()
        for result in warm_up(runtime, options.warmup_batch_sizes, options.warmup_count):
            labels = (spec.model_name, str(result.batch_size))
            metrics.warmup_first.labels(*labels).set(result.first_s)
            metrics.warmup_steady.labels(*labels).set(result.steady_s)
            trace.record(f"warmup bs{result.batch_size}", result.first_s, detail=f"{result.calls} calls")
            log.info(
                "worker %d warmup batch %d: first %.1f ms, steady %.1f ms (%d calls)",
                os.getpid(),
                result.batch_size,
                result.first_s * 1000,
                result.steady_s * 1000,
                result.calls,
            )
        metrics.warmup_seconds.labels(spec.model_name).set(time.perf_counter() - started)
    # Compile caches are complete once warmup has compiled every batch size: stored before ready.
    runtime.warmed()
    state.runtime = runtime


def _load_outcome(loading: asyncio.Future[None]) -> int:
    exc = loading.exception()
    if exc is None:
        return EXIT_OK
    if isinstance(exc, ModelLoadError):
        log.error("%s", exc)
        return EXIT_MODEL_ERROR
    log.error("model load failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return EXIT_FAILED
