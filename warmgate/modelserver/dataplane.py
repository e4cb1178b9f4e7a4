"""What both front ends share: the model's state, readiness, model lookup, and one inference call
with its metrics.

The HTTP application (app.py) and the gRPC service (grpc_service.py) are thin translations of
their wire formats onto these functions, so a rule (when the server is ready, which model names
are known, how a request is counted) is written once and reads the same over either protocol.
Every refusal is a `ProtocolError` carrying the HTTP status; the gRPC service maps it to a status
code with the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from warmgate.modelserver.metrics import ServerMetrics, shape_label
from warmgate.modelserver.runtime.base import InferenceError, Runtime
from warmgate.modelserver.trace import StartupTrace
from warmgate.modelserver.validation import InferRequest, ProtocolError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Names this server's worker on every HTTP response (a header) and every gRPC call (trailing
# metadata), so a client can prove its warmup reached every worker.
WORKER_HEADER = "x-warmgate-worker"
SERVER_NAME = "warmgate-modelserver"
# Server metadata `extensions`, as Triton names them: the HTTP endpoint takes binary tensor data.
EXTENSIONS = ("binary_tensor_data",)


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
    # This worker's start-up trace (GET /v2/warmgate/startup); None: not traced.
    trace: StartupTrace | None = None


def not_ready_reason(context: ServerContext) -> str | None:
    """Why this worker cannot serve inference now; None when it can (model readiness)."""
    state = context.state
    if state.draining:
        return "draining"
    if not state.ready:
        return f"model {context.model_name} is {state.phase}"
    return None


def server_not_ready_reason(context: ServerContext) -> str | None:
    """Server readiness: this worker is ready and so is every other one, so that whichever worker
    the kernel hands a connection to can serve it."""
    reason = not_ready_reason(context)
    if reason is None and not context.all_workers_ready():
        reason = "not every worker is ready yet"
    return reason


def check_model(context: ServerContext, name: str, version: str | None) -> None:
    """404 unless `name` (and `version`, when the client gave one) is the model served here."""
    if name != context.model_name:
        raise ProtocolError(f"unknown model {name!r}; this server serves {context.model_name!r}", 404)
    if version is not None and version != context.model_version:
        raise ProtocolError(
            f"model {name!r} has no version {version!r}; it has {context.model_version!r}", 404
        )


def loaded_runtime(context: ServerContext) -> Runtime:
    """The runtime once loaded (metadata answers while warming); 503 before."""
    runtime = context.state.runtime
    if runtime is None:
        raise ProtocolError(f"model {context.model_name} is {context.state.phase}", 503)
    return runtime


def ready_runtime(context: ServerContext) -> tuple[Runtime, Executor]:
    """The runtime and its executor when this worker serves inference; 503 otherwise."""
    state = context.state
    reason = not_ready_reason(context)
    if reason is not None or state.runtime is None or state.executor is None:
        raise ProtocolError(f"not ready: {reason}", 503)
    return state.runtime, state.executor


@dataclass
class RequestOutcome:
    """Filled in by the front end while `counted` tracks its request."""

    # The HTTP status of the answer (gRPC requests count as the HTTP status of the same answer).
    status: int = 500
    batch_size: int | None = None


@contextlib.contextmanager
def counted(context: ServerContext) -> Iterator[RequestOutcome]:
    """Count one inference request: in flight while inside, then its status, and its latency when
    it succeeded. A ProtocolError sets the status from its own."""
    metrics = context.metrics
    start = context.clock()
    outcome = RequestOutcome()
    metrics.in_flight.inc()
    try:
        yield outcome
    except ProtocolError as exc:
        outcome.status = exc.status
        raise
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(context.model_name, str(outcome.status)).inc()
        if outcome.status == 200 and outcome.batch_size is not None:
            labels = (context.model_name, str(outcome.batch_size))
            metrics.request_duration.labels(*labels).observe(context.clock() - start)


async def run_inference(
    context: ServerContext, runtime: Runtime, executor: Executor, request: InferRequest
) -> Mapping[str, np.ndarray]:
    """One batch through the runtime, off the event loop, timed; a runtime failure is a 500."""
    loop = asyncio.get_running_loop()
    started = context.clock()
    try:
        # Off the event loop: health checks and metrics stay responsive while a batch runs.
        results = await loop.run_in_executor(executor, runtime.infer, request.inputs)
    except InferenceError as exc:
        log.warning("inference failed: %s", exc)
        raise ProtocolError(f"inference failed: {exc}", 500) from None
    seconds = context.clock() - started
    labels = (context.model_name, str(request.batch_size))
    context.metrics.inference_duration.labels(*labels).observe(seconds)
    # The shapes traffic really sends (bounded labels), and the first of each in the start-up trace.
    batch, dims = shape_label(((name, a.shape) for name, a in request.inputs.items()), runtime.info().batched)
    context.metrics.count_shape(context.model_name, batch, dims)
    if context.trace is not None:
        context.trace.first_inference(f"bs{batch} dims {dims}", seconds)
    return results
