"""Latency statistics over raw samples (numpy percentiles; nothing hand-rolled)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from warmgate.state import LatencyStats

PERCENTILES = (50, 90, 95, 99)


def latency_stats(samples: Sequence[float] | np.ndarray) -> LatencyStats:
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        return LatencyStats()
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    return LatencyStats(
        count=int(values.size),
        mean_s=float(values.mean()),
        p50_s=p50,
        p90_s=p90,
        p95_s=p95,
        p99_s=p99,
        max_s=float(values.max()),
    )


def is_stable(latencies: Sequence[float], window: int, tolerance: float) -> bool:
    """perf_analyzer's stability rule: the last `window` values all lie within `tolerance`
    (a fraction) of their mean."""
    if len(latencies) < window:
        return False
    last = np.asarray(latencies[-window:], dtype=np.float64)
    mean = float(last.mean())
    return bool(np.all(np.abs(last - mean) <= tolerance * mean))


def ratio_limit(configured: float, steady: LatencyStats | None) -> float:
    """The post-warm check's limit on first request / steady p50: the configured ratio, raised to
    the spread the steady requests themselves showed (their max over their p50). One rule for
    the gate that judges and the post-warm stage that decides whether to measure more."""
    if steady is None or not steady.p50_s or steady.max_s is None:
        return configured
    return max(configured, steady.max_s / steady.p50_s)
