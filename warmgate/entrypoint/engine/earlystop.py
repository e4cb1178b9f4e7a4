"""Early stopping of the load test: end it before `duration_s` once what the gate judges is known.

The rule, checked every `CHECK_INTERVAL_S` (never per request):

- Not before `min_requests` completed requests and `min_duration_s` seconds, and not before every
  concurrency-check input the schedule sends has been compared at least once under load (so the
  golden-answer check always has a sample of each input).
- Then every judged percentile must be *settled*. The judged percentiles are the latency p95/p99
  with an SLO (`gate.p95_ms`, `gate.p99_ms`; the latency p95 when neither is set) and, when a
  streamed prompt shape is in the mix, the time-to-first-token and inter-token-latency p95 (with
  `gate.ttft_p95_ms` / `gate.itl_p95_ms` as their SLOs when set).
- A percentile q over n samples gets a distribution-free confidence interval from order
  statistics: the number of samples below the true q-quantile is Binomial(n, q), so the sorted
  samples at ranks floor(nq - z*sqrt(nq(1-q))) and ceil(nq + z*sqrt(nq(1-q))) (normal
  approximation, z for `confidence`) bound it. Where a rank falls outside 1..n the interval is
  open on that side and the percentile is not settled (p99 needs n >= z^2 * 99, ~650 at 99%).
- Settled, for a percentile with an SLO: the interval lies wholly below or wholly above the SLO
  (the gate's verdict on it is known at that confidence). Only that: a narrow interval that
  still straddles the SLO is not settled, since stopping there leaves the verdict to where the
  estimate happens to sit, a coin toss the full duration would not make (measured: a verdict
  flipped in 1 of 3 paired runs with the SLO within ~10% of p95, when width alone could stop).
  Such a test runs its whole duration, exactly as without early stopping.
- Settled, for a percentile without an SLO (nothing to decide; the report's figure should be
  right): the interval's half-width is at most `tolerance` of the estimate.
- Agreeing with the recent samples: the interval assumes samples drawn alike, and a server's
  latency drifts (still warming, a cache filling, a neighbour's load): the measured flip was a
  certain fail early in a test whose full run passed. So the latest half of the samples, judged
  alone, must give the same certain verdict (with an SLO), or an estimate inside the whole
  run's interval (without one); a test whose two halves disagree runs on.
- The stop itself: every judged percentile settled, with the same verdicts, at every check over
  at least `HOLD_S` seconds. One look that happens to be certain on a fluke (and looking every
  0.25 s gives flukes many chances) does not end the test; a verdict that changes starts the
  hold again.

Each check costs O(new samples) to collect and O(n) per percentile (np.partition, no sort).
Looking repeatedly raises the chance that one look stops on a fluke; the default confidence
(99%) rather than 95%, and the hold, are what pay for that.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from warmgate.state import QuantileInterval

if TYPE_CHECKING:
    from warmgate.config import Config
    from warmgate.entrypoint.engine.loadgen import LoadSamples, Target

__all__ = ["CHECK_INTERVAL_S", "HOLD_S", "EarlyStop", "agrees", "quantile_interval", "verdict"]

CHECK_INTERVAL_S = 0.25
# Every judged percentile must stay settled, with the same verdict, at every check for this long
# (four or more looks) before the test stops.
HOLD_S = 1.0


def quantile_interval(
    values: np.ndarray, quantile: float, confidence: float, slo_s: float | None = None
) -> QuantileInterval:
    """The `quantile` of `values` and its order-statistics confidence interval (module docstring)."""
    n = int(values.size)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = n * quantile
    spread = z * math.sqrt(n * quantile * (1 - quantile))
    # 1-based ranks of the estimate and the bounds, as 0-based indices.
    estimate_index = min(n - 1, max(0, math.ceil(centre) - 1))
    lower_rank = math.floor(centre - spread)
    upper_rank = math.ceil(centre + spread)
    kth = [estimate_index]
    if lower_rank >= 1:
        kth.append(lower_rank - 1)
    if upper_rank <= n:
        kth.append(upper_rank - 1)
    ordered = np.partition(values, sorted(set(kth)))
    return QuantileInterval(
        quantile=quantile,
        count=n,
        estimate_s=float(ordered[estimate_index]),
        lower_s=float(ordered[lower_rank - 1]) if lower_rank >= 1 else None,
        upper_s=float(ordered[upper_rank - 1]) if upper_rank <= n else None,
        slo_s=slo_s,
    )


def verdict(interval: QuantileInterval) -> str | None:
    """ "pass" or "fail" when the interval lies wholly below or above its SLO; None when the
    verdict is not certain yet (or there is no SLO)."""
    if interval.slo_s is None:
        return None
    if interval.upper_s is not None and interval.upper_s < interval.slo_s:
        return "pass"
    if interval.lower_s is not None and interval.lower_s > interval.slo_s:
        return "fail"
    return None


def is_settled(interval: QuantileInterval, tolerance: float) -> bool:
    """With an SLO: only a certain verdict (a narrow interval across the SLO is not settled).
    Without: the interval's half-width is within `tolerance` of the estimate."""
    if interval.slo_s is not None:
        return verdict(interval) is not None
    if interval.lower_s is None or interval.upper_s is None:
        return False
    return (interval.upper_s - interval.lower_s) / 2 <= tolerance * interval.estimate_s


def agrees(whole: QuantileInterval, latest: QuantileInterval) -> bool:
    """Does the latest half of the samples tell what all of them tell? With an SLO: the same
    certain verdict. Without: its estimate lies inside the whole run's interval."""
    if whole.slo_s is not None:
        return verdict(latest) is not None and verdict(latest) == verdict(whole)
    if whole.lower_s is None or whole.upper_s is None:
        return False
    return whole.lower_s <= latest.estimate_s <= whole.upper_s


@dataclass(frozen=True)
class _Metric:
    name: str
    quantile: float
    slo_s: float | None
    # "latency", "ttft" or "itl": which samples it is computed over.
    source: str


@dataclass
class EarlyStop:
    """The load test's early-stopping state: `check()` from a timer task, `should_stop()` from the
    generator (a flag read). Collects the successful latencies incrementally."""

    config: Config
    samples: LoadSamples
    # Labels of the streamed prompt shapes (what the TTFT and ITL SLOs judge).
    streamed_labels: Sequence[int]
    # (label, variant) of every concurrency-check input the schedule sends.
    check_inputs: set[tuple[int, int]]
    converged: bool = False
    intervals: dict[str, QuantileInterval] = field(default_factory=dict)
    compared: set[tuple[int, int]] = field(default_factory=set)
    _latencies: array[float] = field(default_factory=lambda: array("d"))
    _seen: int = 0
    # Since which check (elapsed seconds) every percentile has been settled with these verdicts.
    _settled_since: float | None = None
    _verdicts: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def for_schedule(
        cls,
        config: Config,
        samples: LoadSamples,
        streamed_labels: Sequence[int],
        targets: Sequence[Target],
        schedule: Sequence[int],
    ) -> EarlyStop:
        check_inputs = {
            (targets[index].label, targets[index].variant)
            for index in set(schedule)
            if targets[index].variant >= 0
        }
        return cls(config, samples, streamed_labels, check_inputs)

    def should_stop(self) -> bool:
        return self.converged

    def record_comparison(self, label: int, variant: int) -> None:
        self.compared.add((label, variant))

    def metrics(self) -> list[_Metric]:
        gate = self.config.gate
        metrics = [
            _Metric(name, quantile, limit_ms / 1000, "latency")
            for name, quantile, limit_ms in (("p95", 0.95, gate.p95_ms), ("p99", 0.99, gate.p99_ms))
            if limit_ms is not None
        ]
        if not metrics:
            metrics.append(_Metric("p95", 0.95, None, "latency"))
        if self.streamed_labels:
            for name, limit_ms in (("ttft_p95", gate.ttft_p95_ms), ("itl_p95", gate.itl_p95_ms)):
                metrics.append(
                    _Metric(name, 0.95, limit_ms / 1000 if limit_ms is not None else None, name[:-4])
                )
        return metrics

    def check(self, elapsed_s: float) -> bool:
        """Judge the samples so far; True (and `should_stop()` from then on) once the rule holds."""
        if self.converged:
            return True
        rule = self.config.load_test.early_stop
        self._collect()
        if len(self.samples) < rule.min_requests or elapsed_s < rule.min_duration_s:
            return False
        if not self.check_inputs <= self.compared:
            return False
        intervals: dict[str, QuantileInterval] = {}
        settled = True
        for metric in self.metrics():
            values, recent = self._values(metric.source)
            if values.size == 0 or recent.size == 0:
                return False
            whole = quantile_interval(values, metric.quantile, rule.confidence, metric.slo_s)
            latest = quantile_interval(recent, metric.quantile, rule.confidence, metric.slo_s)
            intervals[metric.name] = whole
            settled = settled and is_settled(whole, rule.tolerance) and agrees(whole, latest)
        self.intervals = intervals
        if not settled:
            self._settled_since = None
            return False
        verdicts = {name: verdict(interval) for name, interval in intervals.items()}
        if self._settled_since is None or verdicts != self._verdicts:
            self._settled_since, self._verdicts = elapsed_s, verdicts
        self.converged = elapsed_s - self._settled_since >= HOLD_S
        return self.converged

    def _collect(self) -> None:
        # Only the requests completed since the last check: O(new samples).
        latencies, kinds = self.samples.latencies, self.samples.kinds
        end = len(kinds)
        self._latencies.extend(latencies[i] for i in range(self._seen, end) if not kinds[i])
        self._seen = end

    def _values(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        """Every sample of `source`, and its latest half (each shape's, for token timings)."""
        # Copies (np.array over the buffer): a view would stop the generator's arrays from growing.
        if source == "latency":
            values = np.array(self._latencies, dtype=np.float64)
            return values, values[values.size // 2 :]
        parts = [
            np.array(measured.ttfts if source == "ttft" else measured.gaps, dtype=np.float64)
            for label in self.streamed_labels
            if (measured := self.samples.tokens.get(label)) is not None
        ]
        if not parts:
            return np.empty(0), np.empty(0)
        return np.concatenate(parts), np.concatenate([part[part.size // 2 :] for part in parts])
