"""The synthetic load generator: closed loop (fixed concurrency) and open loop (constant rate).

It shares the pod's CPUs with the model server, so it is lean: request bodies are built before
the test starts (one `PreparedRequest` per target), connections are reused by the shared
session, and per request it only times, records three list entries and, for concurrency-check
requests, hands the answer to the inspector.

Open loop measures each latency from the request's *intended* send time, as wrk2 does: when the
server stalls, requests that should have gone out during the stall are charged for the wait, so
queueing cannot hide behind a generator that politely slowed down (coordinated omission). An LLM
completion's time to first token is charged the same wait; its token gaps are kept as measured.

Both loops also end when `should_stop()` turns true (early stopping, earlystop.py): it is called
once per request (closed loop) or per launch round (open loop), so it must only read a flag.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from warmgate.entrypoint.engine.connections import MAX_IN_FLIGHT
from warmgate.protocols import PreparedRequest
from warmgate.protocols.base import Generation, Result

__all__ = [
    "MAX_IN_FLIGHT",
    "LoadSamples",
    "Send",
    "Target",
    "TokenSamples",
    "closed_loop",
    "open_loop",
    "weighted_schedule",
]

# Sends one request over the protocol's transport and times it (`Adapter.send`, with the session,
# timeout and clock bound); never raises for a server-side failure.
Send = Callable[[PreparedRequest], Awaitable[Result]]

# The weighted shape mix is a precomputed schedule this long, cycled: no random draw per request.
SCHEDULE_LENGTH = 4096


@dataclass(frozen=True)
class Target:
    request: PreparedRequest
    # Index of the shape, for per-shape statistics.
    label: int
    # >= 0: a concurrency-check request whose golden answer is variant `variant` of the shape.
    variant: int = -1


# (request index, target, its successful result: the body and the headers the protocol decodes
# with) for concurrency-check targets.
Inspector = Callable[[int, Target, Result], None]


@dataclass
class TokenSamples:
    """What one prompt shape's successful completions measured: time to first token per request,
    every gap between streamed tokens, and the output tokens."""

    ttfts: array[float] = field(default_factory=lambda: array("d"))
    gaps: array[float] = field(default_factory=lambda: array("d"))
    output_tokens: int = 0


@dataclass
class LoadSamples:
    """One entry per completed request: shape label, latency, failure kind ("" = success); and
    per label, for LLM completions, their token timings."""

    labels: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    tokens: dict[int, TokenSamples] = field(default_factory=dict)

    def record(self, label: int, latency_s: float, kind: str) -> None:
        self.labels.append(label)
        self.latencies.append(latency_s)
        self.kinds.append(kind)

    def record_generation(self, label: int, generation: Generation, waited_s: float) -> None:
        """A successful completion's timings; `waited_s` is how long after its intended send time
        it went out (open loop), charged to its time to first token as to its latency."""
        samples = self.tokens.get(label)
        if samples is None:
            samples = self.tokens[label] = TokenSamples()
        samples.ttfts.append(generation.ttft_s + waited_s)
        samples.gaps.extend(generation.gaps_s)
        samples.output_tokens += generation.output_tokens or 0

    def __len__(self) -> int:
        return len(self.kinds)

    def successes(self) -> int:
        return self.kinds.count("")


def weighted_schedule(weights: Sequence[float], length: int = SCHEDULE_LENGTH, seed: int = 0) -> list[int]:
    """Indices drawn by weight (deterministically), to be cycled through."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("at least one weight must be positive")
    probabilities = np.asarray(weights, dtype=np.float64) / total
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(len(weights), size=length, p=probabilities)]


async def closed_loop(
    send: Send,
    targets: Sequence[Target],
    schedule: Sequence[int],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    inspect: Inspector | None = None,
    clock: Callable[[], float] = time.monotonic,
    samples: LoadSamples | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoadSamples:
    """`concurrency` workers, each sending its next request as soon as the last one answered,
    until `duration_s` has passed (or `max_requests` were started, or `should_stop()`)."""
    samples = samples if samples is not None else LoadSamples()
    counter = itertools.count()
    limit = max_requests if max_requests is not None else math.inf
    cycle = len(schedule)
    start = clock()
    deadline = start + duration_s

    async def worker() -> None:
        while True:
            index = next(counter)
            if index >= limit or clock() >= deadline or (should_stop is not None and should_stop()):
                return
            target = targets[schedule[index % cycle]]
            result = await send(target.request)
            samples.record(target.label, result.latency_s, result.kind)
            if result.generation is not None and not result.kind:
                samples.record_generation(target.label, result.generation, 0.0)
            if inspect is not None and target.variant >= 0 and not result.kind:
                inspect(index, target, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.elapsed_s = clock() - start
    return samples


async def open_loop(
    send: Send,
    targets: Sequence[Target],
    schedule: Sequence[int],
    *,
    rate: float,
    duration_s: float,
    max_requests: int | None = None,
    inspect: Inspector | None = None,
    clock: Callable[[], float] = time.monotonic,
    max_in_flight: int = MAX_IN_FLIGHT,
    samples: LoadSamples | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoadSamples:
    """Request i is due at start + i/rate, whether or not earlier ones have answered (until
    `should_stop()`; the requests in flight then still complete)."""
    samples = samples if samples is not None else LoadSamples()
    total = math.floor(duration_s * rate)
    if max_requests is not None:
        total = min(total, max_requests)
    interval = 1.0 / rate
    cycle = len(schedule)
    slots = asyncio.Semaphore(max_in_flight)
    in_flight: set[asyncio.Task[None]] = set()
    start = clock()

    async def fire(index: int, intended: float) -> None:
        try:
            target = targets[schedule[index % cycle]]
            result = await send(target.request)
            latency = clock() - intended
            samples.record(target.label, latency, result.kind)
            if result.generation is not None and not result.kind:
                samples.record_generation(target.label, result.generation, latency - result.latency_s)
            if inspect is not None and target.variant >= 0 and not result.kind:
                inspect(index, target, result)
        finally:
            slots.release()

    try:
        index = 0
        while index < total:
            # Launch everything that is due (several at once when the loop woke up late).
            due = min(total, math.floor((clock() - start) / interval) + 1)
            while index < due:
                await slots.acquire()
                task = asyncio.create_task(fire(index, start + index * interval))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                index += 1
            if should_stop is not None and should_stop():
                break
            if index < total:
                await asyncio.sleep(max(0.0, start + index * interval - clock()))
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        for task in list(in_flight):
            task.cancel()
    samples.elapsed_s = clock() - start
    return samples
