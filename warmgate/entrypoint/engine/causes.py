"""Why first requests were slow: one-time costs classified from what the stages measured.

Pure over the attempt's measurements (no requests of its own, except `fetch_startup`, which
asks the server for its own start-up trace once the gate has decided). Each class names its
evidence and its mitigation; a warm server gets none. The classes, and what tells them apart:

- global_init: the first request of the *first* shape carried a cost far larger than any later
  shape's first request (lazy model load, CUDA context, a thread pool created on first use);
- per_shape_compile: the first request of several shapes was slow against its own steady state
  (a JIT or graph compiler specialising per input shape: torch.compile, TensorRT, XLA);
- per_worker_init: the first request that each of several workers answered was slow (needs a
  server that names its worker, as `warmgate serve` does with x-warmgate-worker);
- allocator_growth: the largest batch kept getting faster after its first request (a caching
  allocator or memory arena growing its pools over the first few large requests);
- slow_under_concurrency: the load test's p95 at concurrency c is far above the serial p95,
  beyond what queueing on the server's workers explains;
- outlier_length: a shape whose per-item length (sequence length, prompt tokens) is far from
  the typical one paid a first-request cost (kernels and buffers sized per length).

A cost is "cold" when it is over both `gate.max_first_to_steady_ratio` times the shape's steady
p50 and `gate.ratio_floor_ms` above it: the gate's own notion of a cold request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import statistics
from collections.abc import Sequence

import aiohttp

from warmgate.config import Config, Shape
from warmgate.entrypoint.engine.evidence import ShapeRun
from warmgate.state import Cause, Diagnosis, LoadTestReport, StartupStep, WarmedShape, from_builtins

# Where the reference server publishes its start-up trace (docs/modelserver.md has the schema).
STARTUP_PATH = "/v2/warmgate/startup"
STARTUP_TIMEOUT_S = 2.0
# A trace larger than this is not a start-up trace; read no further.
STARTUP_MAX_BYTES = 1 << 20
# The first shape's cost must be this many times every later shape's to be global, not per shape.
GLOBAL_OVER_SHAPE = 2.0
# Allocator growth: the median of the largest batch's early steady requests over its late ones.
GROWTH_RATIO = 1.5
# ... over at least this many requests at each end (3 against 3 fall apart by chance 1 time in 20).
GROWTH_WINDOW = 3
# Slow under concurrency: p95 under load over what serial p95 and queueing explain, judged on at
# least CONCURRENCY_SAMPLES load-test requests of the shape. A busy machine (2 cores, several
# processes) stretched a warm loopback server's p95 from a short load test to 3x that.
CONCURRENCY_RATIO = 4.0
CONCURRENCY_SAMPLES = 20
# A per-item length this many times the typical one (or a fraction as small) is an outlier.
OUTLIER_LENGTH = 4.0
COLD_RATIO_DEFAULT = 3.0


def diagnose(
    config: Config,
    runs: Sequence[ShapeRun],
    load: LoadTestReport | None,
    startup: Sequence[StartupStep] = (),
    startup_source: str = "",
) -> Diagnosis:
    """The causes one attempt's measurements show, with the server's trace when it gave one."""
    judge = _Judge(config)
    warmed_runs = [run for run in runs if run.report.first_s is not None]
    causes: list[Cause] = []
    notes: list[str] = []
    per_worker = _per_worker(judge, warmed_runs, notes)
    if per_worker is not None:
        causes.append(per_worker)
    outliers = _outlier_lengths(judge, warmed_runs)
    causes.extend(_first_request_causes(judge, warmed_runs, per_worker is not None, outliers))
    if outliers:
        causes.append(_outlier_cause(judge, outliers))
    growth = _allocator_growth(judge, warmed_runs)
    if growth is not None:
        causes.append(growth)
    contention = _slow_under_concurrency(judge, config, warmed_runs, load)
    if contention is not None:
        causes.append(contention)
    if startup:
        causes = [_with_trace(cause, startup) for cause in causes]
    elif causes:
        notes.append(
            "the server publishes no start-up trace (GET "
            f"{STARTUP_PATH}): the causes above are inferred from request timings alone; what "
            "inside a first request cost the time (weights, device, compile) is not known"
        )
    return Diagnosis(
        causes=causes,
        startup=list(startup),
        startup_source=startup_source,
        notes=notes,
        warmed=[
            WarmedShape(batch_size=run.shape.batch_size, dims=dims_label(run.shape))
            for run in runs
            if run.warmed
        ],
    )


def dims_label(shape: Shape) -> str:
    """A shape's dims as the reference server labels the shapes it serves: per input, in name
    order, its dims without the batch dimension joined by "x"; inputs joined by ","."""
    inputs = shape.tensor_inputs
    return ",".join("x".join(str(d) for d in inputs[name].dims) for name in sorted(inputs))


class _Judge:
    """The gate's notion of a cold request, shared by every class."""

    def __init__(self, config: Config) -> None:
        self.ratio = config.gate.max_first_to_steady_ratio or COLD_RATIO_DEFAULT
        self.floor_s = config.gate.ratio_floor_ms / 1000

    def steady(self, run: ShapeRun) -> float | None:
        report = run.report
        if report.steady.p50_s:
            return report.steady.p50_s
        baseline = report.post_warm_baseline
        return baseline.p50_s if baseline is not None and baseline.p50_s else None

    def excess(self, latency: float, steady: float | None) -> float:
        """The one-time cost in `latency` over `steady`; 0 when the request was not cold."""
        if steady is None or latency <= self.ratio * steady or latency - steady <= self.floor_s:
            return 0.0
        return latency - steady

    def first_excess(self, run: ShapeRun) -> float:
        first = run.report.first_s
        return 0.0 if first is None else self.excess(first, self.steady(run))


def _per_worker(judge: _Judge, runs: Sequence[ShapeRun], notes: list[str]) -> Cause | None:
    """Several workers each slow on the first request it answered."""
    firsts: dict[str, tuple[float, float]] = {}
    unnamed = False
    for run in runs:
        steady = judge.steady(run)
        for latency, worker in run.warm_samples:
            if worker is None:
                unnamed = True
            elif worker not in firsts:
                firsts[worker] = (latency, judge.excess(latency, steady))
    # Only worth saying when a first wave had several cold requests: one per worker, or all
    # queued behind one global initialisation.
    if unnamed and any(_cold_in_first_wave(judge, run) > 1 for run in runs):
        notes.append(
            "the server does not name the worker that answers (an x-warmgate-worker header): "
            "per-worker initialisation could not be told from global initialisation"
        )
    cold = [(worker, latency) for worker, (latency, excess) in firsts.items() if excess > 0]
    if len(firsts) < 2 or len(cold) < 2:
        return None
    slowest = ", ".join(_s(latency) for _, latency in cold)
    return Cause(
        kind="per_worker_init",
        seconds=max(latency for _, latency in cold),
        evidence=f"the first request on each of {len(cold)} of {len(firsts)} workers was slow ({slowest})",
        mitigation="every worker initialises on its own first request: warm with at least as many "
        "concurrent requests as workers (server.workers), or make each worker load and warm before "
        "it reports ready",
    )


def _cold_in_first_wave(judge: _Judge, run: ShapeRun) -> int:
    first_wave = run.warm_samples[: max(1, len(run.warm_samples) - len(run.steady))]
    steady = judge.steady(run)
    return sum(1 for latency, _ in first_wave if judge.excess(latency, steady) > 0)


def _first_request_causes(
    judge: _Judge, runs: Sequence[ShapeRun], per_worker: bool, outliers: dict[str, float]
) -> list[Cause]:
    """Global initialisation (the first shape's cost dwarfs the others') and per-shape compile."""
    if not runs:
        return []
    excess = {run.shape.name: judge.first_excess(run) for run in runs}
    first, later = runs[0], [run for run in runs[1:] if run.shape.name not in outliers]
    causes: list[Cause] = []
    compiled = [run for run in later if excess[run.shape.name] > 0]
    first_cost = excess[first.shape.name]
    later_max = max((excess[run.shape.name] for run in later), default=0.0)
    if first_cost > 0 and not per_worker and first.shape.name not in outliers:
        if not later:
            causes.append(
                Cause(
                    kind="global_init",
                    seconds=first_cost,
                    evidence=f"the first request ({first.shape.name}) took {_s(first.report.first_s)} "
                    f"against {_s(judge.steady(first))} steady; with one shape, global "
                    "initialisation and this shape's compile cannot be told apart",
                    mitigation=_GLOBAL_MITIGATION,
                )
            )
        elif first_cost > GLOBAL_OVER_SHAPE * later_max:
            # The first shape paid its own compile too, estimated as the typical cold later shape's.
            cold_later = [excess[run.shape.name] for run in later if excess[run.shape.name] > 0]
            typical = statistics.median(cold_later) if cold_later else 0.0
            causes.append(
                Cause(
                    kind="global_init",
                    seconds=first_cost - typical,
                    evidence=f"the first request of any shape ({first.shape.name}) took "
                    f"{_s(first.report.first_s)} against {_s(judge.steady(first))} steady; "
                    f"{_later(judge, later_max)}",
                    mitigation=_GLOBAL_MITIGATION,
                )
            )
        else:
            compiled.insert(0, first)
    if compiled:
        rest = [run.shape.name for run in runs if excess[run.shape.name] == 0]
        listed = ", ".join(f"{run.shape.name} {_s(excess[run.shape.name])}" for run in compiled)
        others = f"; {', '.join(rest)} < {judge.ratio:g}x steady" if rest else ""
        if compiled[0] is first and later:
            # Within GLOBAL_OVER_SHAPE of the later shapes' costs, a global start cannot be told apart.
            others += (
                f"; {first.shape.name}, the first shape, may also hold a one-time global start "
                f"(its cost is within {GLOBAL_OVER_SHAPE:g}x of a later shape's)"
            )
        causes.append(
            Cause(
                kind="per_shape_compile",
                seconds=sum(excess[run.shape.name] for run in compiled),
                evidence=f"first request over steady state per shape: {listed}{others}",
                mitigation="the server compiles or specialises per input shape (torch.compile, "
                "TensorRT, XLA, ONNX Runtime's per-shape kernels): warm every shape traffic uses "
                "(`warmgate shapes` lists them from traffic), cache compiled artefacts across restarts, "
                "or pad inputs to a few bucketed shapes",
            )
        )
    return causes


def _later(judge: _Judge, later_max: float) -> str:
    if not later_max:
        return f"every later shape's first request was within {judge.ratio:g}x of its steady state"
    return f"the first request of every later shape cost at most {_s(later_max)} more than its steady state"


_GLOBAL_MITIGATION = (
    "the server initialises lazily on its first request (model load, CUDA context, a compiler's "
    "own start, thread pools): warm it before ready (the gate does), load eagerly at start-up, "
    "and keep compiler caches across restarts"
)


def _length(shape: Shape) -> int:
    """Items per batch element: prompt tokens, else the largest input's element count."""
    if shape.prompt is not None:
        return shape.prompt.tokens
    return max((math.prod(spec.dims) for spec in shape.tensor_inputs.values()), default=0)


def _outlier_lengths(judge: _Judge, runs: Sequence[ShapeRun]) -> dict[str, float]:
    """Shape name -> first-request cost, for cold shapes whose length is far from the typical."""
    lengths = {run.shape.name: _length(run.shape) for run in runs}
    if len(runs) < 3:
        return {}
    typical = statistics.median(lengths.values())
    if typical <= 0:
        return {}
    outliers: dict[str, float] = {}
    for run in runs:
        length = lengths[run.shape.name]
        far = length >= OUTLIER_LENGTH * typical or length * OUTLIER_LENGTH <= typical
        cost = judge.first_excess(run)
        if far and cost > 0:
            outliers[run.shape.name] = cost
    return outliers


def _outlier_cause(judge: _Judge, outliers: dict[str, float]) -> Cause:
    listed = ", ".join(f"{name} {_s(cost)}" for name, cost in outliers.items())
    return Cause(
        kind="outlier_length",
        seconds=sum(outliers.values()),
        evidence=f"shapes whose length is at least {OUTLIER_LENGTH:g}x from the typical one paid a first "
        f"request cost: {listed}",
        mitigation="kernels and buffers are sized per sequence length: warm the lengths traffic "
        "really sends (`warmgate shapes`), or cap and bucket lengths so an outlier reuses a warm shape",
    )


def _allocator_growth(judge: _Judge, runs: Sequence[ShapeRun]) -> Cause | None:
    """The largest batch kept getting faster after its first request."""
    if not runs:
        return None
    largest = max(runs, key=lambda run: run.shape.batch_size * max(1, _length(run.shape)))
    steady = largest.steady
    if len(steady) < 2 * GROWTH_WINDOW:
        return None
    window = max(GROWTH_WINDOW, len(steady) // 3)
    early, late = statistics.median(steady[:window]), statistics.median(steady[-window:])
    # Every early request slower than every late one: noise from a busy machine strays both ways.
    separated = min(steady[:window]) > max(steady[-window:])
    if not separated or early <= GROWTH_RATIO * late or early - late <= judge.floor_s:
        return None
    return Cause(
        kind="allocator_growth",
        seconds=sum(max(0.0, latency - late) for latency in steady[:-window]),
        evidence=f"latency of the largest batch ({largest.shape.name}) fell from {_s(early)} to "
        f"{_s(late)} over its {len(steady)} requests after the first",
        mitigation="an allocator or memory arena grows its pools over the first large requests: warm "
        "the largest batch with more requests (shapes[].count or until_stable), or reserve memory "
        "up front (PYTORCH_CUDA_ALLOC_CONF, ONNX Runtime arena settings)",
    )


def _slow_under_concurrency(
    judge: _Judge, config: Config, runs: Sequence[ShapeRun], load: LoadTestReport | None
) -> Cause | None:
    """p95 under the load test's concurrency against the serial p95, queueing allowed for: with
    c requests on w workers a request may wait behind c/w - 1 others (the slowest shape's serial
    p95 each) before its own turn."""
    if load is None or load.mode != "closed" or not load.concurrency or load.concurrency < 2:
        return None
    workers = config.server.workers or 1
    serial = {run.shape.name: _serial_p95(run) for run in runs}
    known = [value for value in serial.values() if value]
    if not known:
        return None
    waiting = max(0.0, load.concurrency / workers - 1) * max(known)
    worst: tuple[float, str, float, float, float] | None = None
    for run in runs:
        stats, own = load.per_shape.get(run.shape.name), serial[run.shape.name]
        if stats is None or stats.p95_s is None or not own or stats.count < CONCURRENCY_SAMPLES:
            continue
        expected = own + waiting
        slow = stats.p95_s > CONCURRENCY_RATIO * expected and stats.p95_s - expected > judge.floor_s
        if slow and (worst is None or stats.p95_s / own > worst[0]):
            worst = (stats.p95_s / own, run.shape.name, stats.p95_s, own, expected / own)
    if worst is None:
        return None
    ratio, name, loaded, own, explained = worst
    return Cause(
        kind="slow_under_concurrency",
        evidence=f"p95 at concurrency {load.concurrency} is {ratio:.1f}x the serial p95 ({name}: "
        f"{_s(loaded)} against {_s(own)}); queueing on {workers} worker(s) explains up to {explained:.1f}x",
        mitigation="requests contend inside the server (a lock around the model, the GIL, "
        "oversubscribed intra-op threads): add workers, use fewer threads per worker, or batch "
        "dynamically; and load-test at the concurrency one replica really gets",
    )


def _serial_p95(run: ShapeRun) -> float | None:
    baseline = run.report.post_warm_baseline
    return baseline.p95_s if baseline is not None else None


def _with_trace(cause: Cause, startup: Sequence[StartupStep]) -> Cause:
    """A cause the server's own trace speaks to, with the steps that do: what it loaded before
    ready, and how long its first inferences took inside the runtime (so not in the network)."""
    loading = [step for step in startup if not step.name.startswith(("first inference", "warmup"))]
    firsts = [step for step in startup if step.name.startswith("first inference")]
    if cause.kind in ("global_init", "per_worker_init"):
        steps = loading + firsts[:1]
    elif cause.kind in ("per_shape_compile", "outlier_length"):
        steps = firsts + [step for step in startup if step.name.startswith("warmup")]
    else:
        return cause
    if not steps:
        return cause
    listed = ", ".join(f"{step.name} {_s(step.seconds)}" for step in steps[:6])
    more = f" (+{len(steps) - 6} more)" if len(steps) > 6 else ""
    return dataclasses.replace(
        cause, evidence=f"{cause.evidence}; the server's trace: {listed}{more}", source="server trace"
    )


async def fetch_startup(session: aiohttp.ClientSession, server_url: str) -> tuple[list[StartupStep], str]:
    """The server's start-up trace and where it came from. A server without one (404, not JSON,
    a transport other than HTTP) gives no steps; that is never a failure of the run."""
    if not server_url.startswith(("http://", "https://")):
        return [], ""
    url = server_url.rstrip("/") + STARTUP_PATH
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=STARTUP_TIMEOUT_S)) as response:
            if response.status != 200:
                return [], ""
            raw = await response.content.read(STARTUP_MAX_BYTES)
        document = json.loads(raw)
        steps = [from_builtins(StartupStep, step) for step in document["steps"]]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
        return [], ""
    return steps, f"GET {url}"


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
