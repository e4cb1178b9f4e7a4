"""Latency statistics come from numpy over the raw samples; stability follows perf_analyzer."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from warmgate.entrypoint.engine.stats import is_stable, latency_stats


def test_empty_samples_give_empty_stats() -> None:
    stats = latency_stats([])
    assert stats.count == 0 and stats.p50_s is None and stats.max_s is None


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=200))
def test_percentiles_match_numpy(samples: list[float]) -> None:
    stats = latency_stats(samples)
    expected = np.percentile(samples, [50, 90, 95, 99])
    assert [stats.p50_s, stats.p90_s, stats.p95_s, stats.p99_s] == [float(v) for v in expected]
    assert stats.count == len(samples) and stats.max_s == max(samples)
    assert stats.p50_s is not None and stats.p99_s is not None and stats.p50_s <= stats.p99_s <= max(samples)


def test_stability_needs_a_full_window_within_tolerance() -> None:
    assert not is_stable([1.0, 1.0], window=3, tolerance=0.1)
    assert is_stable([5.0, 1.0, 1.05, 0.95], window=3, tolerance=0.1)
    assert not is_stable([1.0, 1.05, 1.3], window=3, tolerance=0.1)
