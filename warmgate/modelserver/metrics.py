"""The server's own Prometheus metrics, on a registry built per worker (never the global one).

Each worker process exposes its own numbers; the `worker` label on warmgate_modelserver_worker_info
and the x-warmgate-worker response header say which one answered a scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets from 1 ms to 10 s: CPU batches of the demo take milliseconds, cold GPU calls seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry, worker: str) -> None:
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
        self.requests = Counter(
            f"{prefix}_requests",
            "Inference requests by model and HTTP status code.",
            ["model", "code"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{prefix}_in_flight_requests", "Inference requests being processed.", registry=registry
        )
        self.load_seconds = Gauge(
            f"{prefix}_model_load_seconds",
            "Time to load the model in this worker.",
            ["model"],
            registry=registry,
        )
        self.warmup_seconds = Gauge(
            f"{prefix}_warmup_seconds", "Time spent on in-process warmup.", ["model"], registry=registry
        )
        self.warmup_first = Gauge(
            f"{prefix}_warmup_first_call_seconds",
            "In-process warmup: latency of the first call per batch size.",
            ["model", "batch_size"],
            registry=registry,
        )
        self.warmup_steady = Gauge(
            f"{prefix}_warmup_steady_call_seconds",
            "In-process warmup: median latency of the later calls per batch size.",
            ["model", "batch_size"],
            registry=registry,
        )
        self.ready = Gauge(f"{prefix}_ready", "1 when this worker serves inference.", registry=registry)
        info = Gauge(
            f"{prefix}_worker_info", "The worker process behind this scrape.", ["worker"], registry=registry
        )
        info.labels(worker=worker).set(1)
