"""Traffic the warmup never warmed: the shapes the model server served, against the shapes the
ready marker's report lists as warmed.

The reference server (`warmgate serve`) counts the requests it serves by shape in
`warmgate_modelserver_request_shapes_total{batch_size, dims}`. When Prometheus scrapes the probe,
the probe scrapes the server's /metrics (at most every `interval_s`; a slow or absent server delays
only /metrics, never a probe) and exports, per shape that no warmup request had,
`warmgate_unwarmed_shape_requests_total{shape="bs16 dims 128,128"}`: the server's own count of that
shape, so it resets when the server does, as a counter may. Shapes are labelled from a bounded set
(the server caps its own labels; beyond `MAX_SHAPES` here, and the server's own "other", they are
summed under shape="other", always exported, at 0 when none). Each new unwarmed shape is logged
once.

Nothing to judge (no ready marker, a report written before the warmed set was recorded, a server
without the counter): no samples. Light on purpose: prometheus_client's text parser and the
report the probe already reads; no engine import.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from warmgate.state import Report

log = logging.getLogger("warmgate.probe")

SERVER_SHAPES = "warmgate_modelserver_request_shapes"
OTHER = "other"
# Distinct unwarmed shapes exported (and logged) one by one; the rest are shape="other".
MAX_SHAPES = 20
# How often the server's /metrics is read at most: a Prometheus scrape interval.
INTERVAL_S = 15.0

# Reads the server's metrics page; None when it could not be read.
Fetch = Callable[[], Awaitable[str | None]]


class UnwarmedShapes(Collector):
    def __init__(
        self,
        fetch: Fetch,
        report: Callable[[], Report | None],
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._report = report
        self._interval_s = interval_s
        self._clock = clock
        self._last_refresh: float | None = None
        self._lock = asyncio.Lock()
        # (batch_size, dims) -> requests the server counted, from the latest readable page.
        self._served: dict[tuple[str, str], float] | None = None
        self._logged: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        """Read the server's page unless it was read within the interval."""
        async with self._lock:
            now = self._clock()
            if self._last_refresh is not None and now - self._last_refresh < self._interval_s:
                return
            self._last_refresh = now
            text = await self._fetch()
            self._served = None if text is None else served_shapes(text)

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        report = self._report()
        served = self._served
        if served is None or report is None or report.diagnosis is None:
            return []
        warmed = {(str(w.batch_size), w.dims) for w in report.diagnosis.warmed}
        family = CounterMetricFamily(
            "warmgate_unwarmed_shape_requests",
            "Requests the model server served with a shape no warmup request had (the server's own "
            f'count); at most {MAX_SHAPES} shapes by name, the rest (and the server\'s own "other") as '
            'shape="other".',
            labels=["shape"],
        )
        named: dict[str, float] = {}
        other = 0.0
        for key, count in sorted(served.items()):
            if key in warmed:
                continue
            label = shape_name(*key)
            if key[0] == OTHER or (label not in named and len(named) >= MAX_SHAPES):
                other += count
                continue
            named[label] = named.get(label, 0.0) + count
            if key not in self._logged:
                self._logged.add(key)
                log.warning(
                    "traffic uses shape %s, which no warmup request had (%d requests so far): its first "
                    "requests paid a cold start; add it to shapes: (`warmgate shapes` proposes a section)",
                    label,
                    count,
                )
        for label, count in named.items():
            family.add_metric([label], count)
        family.add_metric([OTHER], other)
        return [family]


def shape_name(batch_size: str, dims: str) -> str:
    return OTHER if batch_size == OTHER else f"bs{batch_size} dims {dims}"


def served_shapes(text: str) -> dict[tuple[str, str], float] | None:
    """(batch_size, dims) -> requests, summed over models; None when the page has no such counter
    (or is not a Prometheus page)."""
    from prometheus_client.parser import text_string_to_metric_families

    served: dict[tuple[str, str], float] = {}
    found = False
    try:
        for family in text_string_to_metric_families(text):
            if family.name.removesuffix("_total") != SERVER_SHAPES:
                continue
            found = True
            for sample in family.samples:
                if sample.name.endswith("_total") and "batch_size" in sample.labels:
                    key = (sample.labels["batch_size"], sample.labels.get("dims", ""))
                    served[key] = served.get(key, 0.0) + sample.value
    except ValueError:
        return None
    return served if found else None
