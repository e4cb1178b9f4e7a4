"""The server's own Prometheus metrics, never on the global registry.

A single-process server keeps them in an ordinary per-process registry. With `--workers N` the
kernel sends each scrape to any worker, so per-worker registries would make counters jump
backwards between scrapes; instead the supervisor creates a fresh directory for this server
instance and every worker writes its values there through prometheus_client's multiprocess mode
(as MLServer does). A scrape of any worker merges all of them: counters and histograms summed over
every worker that ever ran (so they never decrease when a worker is restarted), gauges by the
`multiprocess_mode` chosen below.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# Buckets from 1 ms to 10 s: CPU batches of the demo take milliseconds, cold GPU calls seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The shapes a worker labels one by one (`warmgate_modelserver_request_shapes_total`); requests of
# any further shape are counted under batch_size="other", dims="other". Per worker: a server with
# N workers exports at most N times this many (in practice the same shapes reach every worker).
MAX_SHAPE_SERIES = 32
# A dims label longer than this (a model with many inputs) is "other" too: labels stay short.
MAX_DIMS_LABEL = 64
OTHER = "other"
# A scrape that races a worker's exit (its live-gauge file removed between listing and reading)
# lists the files again; more than a few such races in a row would need workers dying continuously.
_COLLECT_ATTEMPTS = 3


class WorkerFilesCollector(MultiProcessCollector):
    """prometheus_client's merging collector, safe against workers starting and exiting mid-scrape.

    A worker creates its file empty and sizes it a moment later; reading it in between fails, so a
    scrape at a worker's start would answer 500. Empty files hold no samples yet and are skipped.
    """

    def __init__(self, registry: CollectorRegistry, path: Path) -> None:
        super().__init__(registry, path=str(path))
        self._directory = path

    def collect(self) -> Iterable[Metric]:
        for attempt in range(_COLLECT_ATTEMPTS):
            try:
                files = [str(f) for f in self._directory.glob("*.db") if f.stat().st_size > 0]
                return self.merge(files, accumulate=True)
            except FileNotFoundError:
                if attempt == _COLLECT_ATTEMPTS - 1:
                    raise
        return []


class ServerMetrics:
    """One worker's metrics. `registry` is what /metrics exposes: with `multiprocess_dir`, a registry
    that merges every worker's files; otherwise the given per-process one."""

    def __init__(
        self, registry: CollectorRegistry, worker: str, multiprocess_dir: Path | None = None
    ) -> None:
        if multiprocess_dir is not None:
            # The metric objects write to this worker's files; only the merging collector is exposed,
            # so this worker's values are not also reported on their own.
            # Not auto_describe: registering would then collect at once, before the other workers'
            # files exist.
            exposed = CollectorRegistry()
            WorkerFilesCollector(exposed, multiprocess_dir)
            self.registry = exposed
            registry = CollectorRegistry(auto_describe=True)
        else:
            self.registry = registry
        prefix = "warmgate_modelserver"
        self.request_duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "Inference request latency, decoding to encoding, by model and batch size.",
            ["model", "batch_size"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            f"{prefix}_inference_duration_seconds",
            "Time inside the runtime for one batch, by model and batch size.",
            ["model", "batch_size"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shapes = Counter(
            f"{prefix}_request_shapes",
            "Inference requests served, by shape: batch size (0: the model has no batch dimension) and "
            'per input in name order its dims without the batch dimension ("4", "3x224x224", "128,128"); '
            f'at most {MAX_SHAPE_SERIES} shapes per worker, the rest as batch_size="other", dims="other".',
            ["model", "batch_size", "dims"],
            registry=registry,
        )
        self._shapes_seen: set[tuple[str, str]] = set()
        self.requests = Counter(
            f"{prefix}_requests",
            "Inference requests by model and HTTP status code.",
            ["model", "code"],
            registry=registry,
        )
        # Gauges across workers: in-flight requests add up over the live workers; the load and warmup
        # times report the slowest live worker (the server is ready only when that one is); ready is 1
        # only when every live worker is.
        self.in_flight = Gauge(
            f"{prefix}_in_flight_requests",
            "Inference requests being processed (all workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.load_seconds = Gauge(
            f"{prefix}_model_load_seconds",
            "Time to load the model (the slowest worker).",
            ["model"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.warmup_seconds = Gauge(
            f"{prefix}_warmup_seconds",
            "Time spent on in-process warmup (the slowest worker).",
            ["model"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.warmup_first = Gauge(
            f"{prefix}_warmup_first_call_seconds",
            "In-process warmup: latency of the first call per batch size (the slowest worker).",
            ["model", "batch_size"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.warmup_steady = Gauge(
            f"{prefix}_warmup_steady_call_seconds",
            "In-process warmup: median latency of the later calls per batch size (the slowest worker).",
            ["model", "batch_size"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            f"{prefix}_ready",
            "1 when every worker serves inference.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        # One series per live worker: its label differs per process, so livemax keeps each apart.
        info = Gauge(
            f"{prefix}_worker_info",
            "The live worker processes, one series each.",
            ["worker"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        info.labels(worker=worker).set(1)

    def count_shape(self, model: str, batch_size: int, dims: str) -> None:
        """One request served with this shape, its labels from a bounded set (see MAX_SHAPE_SERIES)."""
        labels = (str(batch_size), dims)
        if labels not in self._shapes_seen:
            if len(self._shapes_seen) >= MAX_SHAPE_SERIES or len(dims) > MAX_DIMS_LABEL:
                labels = (OTHER, OTHER)
            else:
                self._shapes_seen.add(labels)
        self.shapes.labels(model, *labels).inc()


def shape_label(shapes: Iterable[tuple[str, tuple[int, ...]]], batched: bool) -> tuple[int, str]:
    """(batch size, dims) of a request from its inputs' (name, shape): what the shape metric and
    the start-up trace label, and what warmgate's report lists as warmed (causes.dims_label
    writes the same format). An unbatched model's batch size is 0 and its dims are whole."""
    ordered = sorted(shapes)
    batch = ordered[0][1][0] if batched and ordered and ordered[0][1] else 0
    dims = ",".join("x".join(str(d) for d in (shape[1:] if batched else shape)) for _, shape in ordered)
    return batch, dims


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[Path]:
    """In the supervisor, before forking workers: a fresh directory for this server instance that
    workers inherit through PROMETHEUS_MULTIPROC_DIR, removed (and the process restored) at exit.

    prometheus_client picks its value class when it is first imported, which in this process was
    before the directory existed; like MLServer, switch it to the multiprocess one explicitly. Only
    metrics created afterwards (in the forked workers) are affected; the supervisor creates none.
    """
    directory = Path(tempfile.mkdtemp(prefix="warmgate-modelserver-metrics-"))
    previous_env = os.environ.get(MULTIPROC_ENV)
    previous_class = values.ValueClass
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()
    try:
        yield directory
    finally:
        values.ValueClass = previous_class
        if previous_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous_env
        shutil.rmtree(directory, ignore_errors=True)


def worker_exited(directory: Path, pid: int) -> None:
    """Drop a dead worker's live gauges (in flight, ready, worker_info); its counts stay summed."""
    mark_process_dead(pid, str(directory))
