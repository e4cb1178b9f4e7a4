"""Prometheus metrics: the ready marker's report as gauges, plus the probe's own traffic.

The report gauges come from a custom collector that reads the current state at scrape time, so
nothing has to be kept in sync between scrapes. Everything is registered in a registry the caller
builds and injects (one per probe process, one per test); there is no global registry here.

Conventions every family here follows (tests/probe/test_probe_metrics.py checks them):
- a label whose values are known in advance (phases, the load test's error kinds, the probe's
  endpoints) is exported with every value, at 0 when nothing happened, so alerts and ratios need
  no `or vector(0)`; values a report lacks (a shape's post-warm latency) are left out instead;
- no `_created` series: they are per-process start times that say nothing about a warmup, and
  prometheus_client's switch for them is process-global, so the probe's own counters are
  collected through a filter on this registry rather than by flipping that switch;
- the shape (and the GPU index) is a label of its own, never packed into another label's value.

To add a metric: add its family in this module (a report figure in `report_families`, a state
figure in `state_families`), its row in docs/probe.md, and assert its value in
tests/probe/test_probe_metrics.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from warmgate.probe.state_view import StateSnapshot
from warmgate.protocols.failures import CONNECTION, INVALID, STREAM_KINDS, TIMEOUT
from warmgate.state import GateCheck, LatencyStats, LoadTestReport, MemoryReport, Phase, Report

# Probes answer from memory in well under a millisecond; the interesting range is 0.1 ms to the
# kubelet's 1 s timeout, so the buckets start far below prometheus_client's default 5 ms.
PROBE_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

# Steady-state percentiles per shape, and load-test percentiles ("1" is the maximum).
STEADY_QUANTILES = (("0.5", "p50_s"), ("0.95", "p95_s"), ("0.99", "p99_s"))
LOADTEST_QUANTILES = (
    ("0.5", "p50_s"), ("0.9", "p90_s"), ("0.95", "p95_s"), ("0.99", "p99_s"), ("1", "max_s"),
)  # fmt: skip


# Every load-test error kind the entrypoint can report besides http_<status>: exported at 0 (the
# ways a completion stream can fail, STREAM_KINDS, too when the shapes are LLM prompts).
LOADTEST_ERROR_KINDS = (TIMEOUT, CONNECTION, INVALID)
# The phases the entrypoint times (report.phases keys): exported at 0 when a phase was skipped
# (no load test configured, say). "post-warm-check" is timed inside the load-testing status phase.
TIMED_PHASES = (
    Phase.WAITING_FOR_SERVER.value, Phase.WARMING.value, Phase.LOAD_TESTING.value, "post-warm-check",
)  # fmt: skip
# The phases after which the entrypoint's run is over (the container exited or is exiting).
ENDED_PHASES = frozenset({Phase.STOPPED, Phase.FAILED})
# How the gate names a check about one shape or one GPU: "concurrency[bs1]", "gpu_memory[0]".
_SUBJECT_CHECK = re.compile(r"(?P<check>[^\[\]]+)\[(?P<subject>[^\[\]]*)\]")
GPU_CHECKS = frozenset({"gpu_memory"})


@dataclass(frozen=True)
class MetricsInput:
    snapshot: StateSnapshot
    ready: bool


class ProbeMetrics(Collector):
    """The probe's own request counts and latencies, collected without `_created` samples.

    The Counter and Histogram do the thread-safe counting; they are kept off every registry and
    this collector, registered instead, hands their families on minus the `_created` series.
    """

    def __init__(self, registry: CollectorRegistry, endpoints: Sequence[str] = ()) -> None:
        self.requests = Counter(
            "warmgate_probe_requests",
            "Requests the probe sidecar answered, by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=None,
        )
        self.duration = Histogram(
            "warmgate_probe_request_duration_seconds",
            "Time the probe sidecar took to answer, by endpoint.",
            ["endpoint"],
            buckets=PROBE_LATENCY_BUCKETS,
            registry=None,
        )
        # Known endpoints start at a count of 0, so the first probe is a visible increase.
        for endpoint in endpoints:
            self.duration.labels(endpoint=endpoint)
        registry.register(self)

    def observe(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.duration.labels(endpoint=endpoint).observe(seconds)

    def describe(self) -> Iterable[Metric]:
        return [*self.requests.describe(), *self.duration.describe()]

    def collect(self) -> Iterable[Metric]:
        for family in (*self.requests.collect(), *self.duration.collect()):
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class StateCollector(Collector):
    """Reads the state (and the latest readiness verdict) on every scrape."""

    def __init__(self, source: Callable[[], MetricsInput]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # No collect() at registration: the state may not exist yet.
        return []

    def collect(self) -> Iterable[Metric]:
        return state_families(self._source())


def build_registry(
    source: Callable[[], MetricsInput], endpoints: Sequence[str] = ()
) -> tuple[CollectorRegistry, ProbeMetrics]:
    """A fresh registry with the state collector and the probe's own metrics (for `endpoints`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(source))
    return registry, ProbeMetrics(registry, endpoints)


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def state_families(data: MetricsInput) -> list[Metric]:
    snapshot = data.snapshot
    ready = _gauge("warmgate_ready", "1 while the probe answers /readyz with 200, else 0.")
    ready.add_metric([], 1.0 if data.ready else 0.0)
    phase = _gauge("warmgate_phase", "1 for the entrypoint's current phase, 0 for the others.", ["phase"])
    for candidate in Phase:
        phase.add_metric([candidate.value], 1.0 if snapshot.phase is candidate else 0.0)
    running = _gauge(
        "warmgate_entrypoint_running",
        "1 while the entrypoint's run is in progress; 0 once it stopped or failed, or when there is "
        "no readable status.json.",
    )
    running.add_metric([], 0.0 if snapshot.phase is None or snapshot.phase in ENDED_PHASES else 1.0)
    families: list[Metric] = [ready, phase, running]
    if snapshot.status is not None:
        # Exposed as warmgate_instance_info{instance_id="..."} 1.
        info = InfoMetricFamily("warmgate_instance", "The entrypoint run the state belongs to.")
        info.add_metric([], {"instance_id": snapshot.status.instance_id})
        families.append(info)
    if snapshot.evidence is not None:
        families.extend(report_families(snapshot.evidence))
    return families


def report_families(report: Report) -> list[Metric]:
    """The gauges of one ready.json; absent values are left out rather than exported as 0."""
    families: list[Metric] = []
    families.extend(_shape_families(report))
    families.extend(_prompt_families(report))

    durations = _gauge(
        "warmgate_phase_duration_seconds", "Seconds spent in each entrypoint phase.", ["phase"]
    )
    for name, seconds in {**dict.fromkeys(TIMED_PHASES, 0.0), **report.phases}.items():
        durations.add_metric([name], seconds)
    families.append(durations)

    if report.load_test is not None:
        load = report.load_test
        latency = _summary(
            "warmgate_loadtest_latency_seconds",
            "Load-test request latency percentiles (quantile 1 is the maximum).",
        )
        _add_quantiles(latency, {}, load.latency, LOADTEST_QUANTILES)
        families.append(latency)
        throughput = _gauge(
            "warmgate_loadtest_throughput_requests_per_second", "Load-test throughput (successful requests)."
        )
        throughput.add_metric([], load.throughput_rps)
        requests = _gauge("warmgate_loadtest_requests", "Requests the load test sent.")
        requests.add_metric([], float(load.requests))
        errors = _gauge(
            "warmgate_loadtest_errors",
            "Load-test errors by kind (timeout, connection, invalid_response always; the stream_* "
            "kinds and no_first_token for LLM prompt shapes; http_<status> when seen).",
            ["kind"],
        )
        prompts = any(shape.prompt is not None for shape in report.shapes)
        known = LOADTEST_ERROR_KINDS + (STREAM_KINDS if prompts else ())
        for kind, count in {**dict.fromkeys(known, 0), **load.errors}.items():
            errors.add_metric([kind], float(count))
        families.extend([throughput, requests, errors])
        families.extend(_token_families(load))

    if report.memory is not None:
        families.extend(_memory_families(report.memory))

    gate = report.gate
    verdict = _gauge("warmgate_gate_passed", "1 when the readiness gate passed, else 0.")
    verdict.add_metric([], 1.0 if gate.passed else 0.0)
    families.extend([_gate_check_family(gate.checks), verdict])
    return families


def check_labels(check: GateCheck) -> dict[str, str]:
    """The labels of one gate check: `check`, plus `shape` or `gpu` for a per-shape or per-GPU
    check (the gate names those "concurrency[bs1]", "gpu_memory[0]")."""
    match = _SUBJECT_CHECK.fullmatch(check.name)
    if match is None:
        return {"check": check.name}
    name, subject = match["check"], match["subject"]
    return {"check": name, "gpu" if name in GPU_CHECKS else "shape": subject}


def _gate_check_family(checks: Iterable[GateCheck]) -> GaugeMetricFamily:
    family = _gauge(
        "warmgate_gate_check_passed",
        "1 when the gate's check passed, else 0; per-shape checks carry `shape`, per-GPU ones `gpu`.",
    )
    # Duplicate label sets would make the whole exposition invalid: the last one wins.
    samples = {tuple(sorted(check_labels(c).items())): c.passed for c in checks}
    for labels, passed in samples.items():
        family.add_sample(family.name, dict(labels), 1.0 if passed else 0.0)
    return family


def _shape_families(report: Report) -> list[Metric]:
    first = _gauge(
        "warmgate_shape_first_request_seconds", "First-request latency of each warmup shape.", ["shape"]
    )
    steady = _summary(
        "warmgate_shape_steady_seconds", "Steady-state latency percentiles per shape.", ["shape"]
    )
    ratio = _gauge(
        "warmgate_shape_first_to_steady_ratio", "First-request latency over steady p50, per shape.", ["shape"]
    )
    post_warm = _gauge(
        "warmgate_shape_post_warm_seconds", "Latency of the first request after warmup, per shape.", ["shape"]
    )
    checked = _gauge(
        "warmgate_shape_concurrency_checked",
        "Load-test responses compared with their one-at-a-time golden answer, per shape.",
        ["shape"],
    )
    mismatches = _gauge(
        "warmgate_shape_concurrency_mismatches",
        "Compared responses that differed from the golden answer (beyond tolerance), per shape.",
        ["shape"],
    )
    deviation = _gauge(
        "warmgate_shape_concurrency_max_abs_deviation",
        "Largest absolute deviation of a floating-point output from its golden answer, per shape.",
        ["shape"],
    )
    # Shape names are unique in a valid config; the last one wins if a report says otherwise,
    # because duplicate samples would make the whole exposition invalid.
    for shape in {shape.name: shape for shape in report.shapes}.values():
        _add_optional(first, [shape.name], shape.first_s)
        _add_quantiles(steady, {"shape": shape.name}, shape.steady, STEADY_QUANTILES)
        _add_optional(ratio, [shape.name], shape.first_to_steady_ratio)
        _add_optional(post_warm, [shape.name], shape.post_warm_s)
        check = shape.concurrency_check
        # A shape that was not checked (opted out, no load test) has no figures, not zeros.
        if check is not None and not check.skipped:
            checked.add_metric([shape.name], float(check.checked))
            mismatches.add_metric([shape.name], float(check.mismatches))
            _add_optional(deviation, [shape.name], check.max_abs_deviation)
    return [first, steady, ratio, post_warm, checked, mismatches, deviation]


def _prompt_families(report: Report) -> list[Metric]:
    """Per LLM prompt shape: its post-warm time to first token (first, and the serial steady
    state after it) and the prompt length the server counted."""
    prompts = [(shape, shape.prompt) for shape in report.shapes if shape.prompt is not None]
    if not prompts:
        return []
    first = _gauge(
        "warmgate_shape_ttft_first_seconds",
        "Time to first token of the first request after warmup, per prompt shape (what the "
        "first-to-steady ratio judges).",
        ["shape"],
    )
    steady = _summary(
        "warmgate_shape_ttft_steady_seconds",
        "Time to first token of the serial requests after that first one, per prompt shape.",
        ["shape"],
    )
    tokens = _gauge(
        "warmgate_shape_prompt_tokens", "Prompt length per prompt shape, as the server counted it.", ["shape"]
    )
    for shape, prompt in {shape.name: (shape, prompt) for shape, prompt in prompts}.values():
        _add_optional(first, [shape.name], shape.post_warm_s)
        if shape.post_warm_baseline is not None:
            _add_quantiles(steady, {"shape": shape.name}, shape.post_warm_baseline, STEADY_QUANTILES)
        _add_optional(tokens, [shape.name], prompt.achieved_tokens)
    return [first, steady, tokens]


def _token_families(load: LoadTestReport) -> list[Metric]:
    """The load test's completions: over the streamed prompt shapes (what the TTFT and ITL SLOs
    judge), and per prompt shape."""
    if load.tokens is None and not load.per_shape_tokens:
        return []
    ttft = _summary(
        "warmgate_loadtest_ttft_seconds",
        "Load-test time to first token percentiles over the streamed prompt shapes (quantile 1 is "
        "the maximum).",
    )
    itl = _summary(
        "warmgate_loadtest_itl_seconds",
        "Load-test inter-token latency (gap between streamed tokens) percentiles over the streamed "
        "prompt shapes (quantile 1 is the maximum).",
    )
    rate = _gauge(
        "warmgate_loadtest_output_tokens_per_second",
        "Output tokens of successful load-test completions per second, over the streamed prompt shapes.",
    )
    shape_ttft = _summary(
        "warmgate_shape_loadtest_ttft_seconds",
        "Load-test time to first token percentiles per prompt shape.",
        ["shape"],
    )
    shape_itl = _summary(
        "warmgate_shape_loadtest_itl_seconds",
        "Load-test inter-token latency percentiles per streamed prompt shape.",
        ["shape"],
    )
    shape_rate = _gauge(
        "warmgate_shape_output_tokens_per_second",
        "Output tokens of successful load-test completions per second, per prompt shape.",
        ["shape"],
    )
    if load.tokens is not None:
        _add_quantiles(ttft, {}, load.tokens.ttft, LOADTEST_QUANTILES)
        _add_quantiles(itl, {}, load.tokens.itl, LOADTEST_QUANTILES)
        rate.add_metric([], load.tokens.output_tokens_per_s)
    for name, stats in load.per_shape_tokens.items():
        _add_quantiles(shape_ttft, {"shape": name}, stats.ttft, LOADTEST_QUANTILES)
        _add_quantiles(shape_itl, {"shape": name}, stats.itl, LOADTEST_QUANTILES)
        shape_rate.add_metric([name], stats.output_tokens_per_s)
    return [ttft, itl, rate, shape_ttft, shape_itl, shape_rate]


def _memory_families(memory: MemoryReport) -> list[Metric]:
    families: list[Metric] = []
    peak_bytes = memory.judged_peak_bytes
    if peak_bytes is not None:
        peak = _gauge(
            "warmgate_memory_peak_bytes",
            "Peak memory of the model server's process tree during warmup and load test, as the "
            "gate judges it: PSS (shared pages split between workers) where readable, else RSS.",
        )
        peak.add_metric([], float(peak_bytes))
        families.append(peak)
    if memory.limit_bytes is not None:
        limit = _gauge("warmgate_memory_limit_bytes", "The memory limit the peak was checked against.")
        limit.add_metric([], float(memory.limit_bytes))
        families.append(limit)
    gpus = {str(gpu.index): gpu for gpu in memory.gpus}
    if gpus:
        gpu_peak = _gauge("warmgate_gpu_memory_peak_bytes", "Peak GPU memory used, per GPU.", ["gpu"])
        gpu_total = _gauge("warmgate_gpu_memory_total_bytes", "Total GPU memory, per GPU.", ["gpu"])
        for index, gpu in gpus.items():
            gpu_peak.add_metric([index], float(gpu.peak_used_bytes))
            gpu_total.add_metric([index], float(gpu.total_bytes))
        families.extend([gpu_peak, gpu_total])
    return families


def _summary(name: str, documentation: str, labels: Iterable[str] = ()) -> SummaryMetricFamily:
    return SummaryMetricFamily(name, documentation, labels=list(labels))


def _add_quantiles(
    family: SummaryMetricFamily,
    labels: dict[str, str],
    stats: LatencyStats,
    quantiles: Iterable[tuple[str, str]],
) -> None:
    """Percentiles already computed by the entrypoint, exposed as a summary: the `quantile` label
    is reserved for summaries, and _count/_sum let PromQL derive the mean."""
    values = [(quantile, getattr(stats, attribute)) for quantile, attribute in quantiles]
    values = [(quantile, v) for quantile, v in values if v is not None]
    if not values and not stats.count:
        return
    for quantile, v in values:
        family.add_sample(family.name, {**labels, "quantile": quantile}, float(v))
    family.add_sample(f"{family.name}_count", labels, float(stats.count))
    if stats.mean_s is not None:
        family.add_sample(f"{family.name}_sum", labels, stats.mean_s * stats.count)


def _add_optional(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, float(value))
