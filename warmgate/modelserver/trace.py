"""The server's own start-up trace: what each worker spent its start-up on, published at
`GET /v2/warmgate/startup` so that `warmgate run` can merge it into its report (causes.py).

Steps, in the order they started (a step may enclose later ones), each with its start (seconds
since the worker started; null when only its duration is known) and duration: `runtime load`
(the whole runtime load), inside it what the runtime can tell apart (`weights read`, `device
init`, `tokenizer load`), then `warmup bs<N>` for the server's own warmup (the first call's
latency), and `first inference bs<N> dims <D>` for the first request of each shape served after
ready (where a lazily compiling runtime pays per-shape compiles), at most `MAX_FIRST_INFERENCES`.

Document (schema_version 1):
    {"schema_version": 1, "worker": "1234", "started_at": 1764650000.1,
     "steps": [{"name": "weights read", "started_s": 0.01, "seconds": 0.12, "detail": ""}, ...]}

Runtimes record their sub-steps through `startup_step`, which finds the worker's trace in a
context variable set by the loading thread: a runtime module then needs no trace argument, and a
runtime used outside a worker (tests, `warmgate serve --demo` builds) records nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
# Per-shape first inferences kept: enough for every warmed shape of a real deployment, bounded
# against traffic that sends a new shape per request.
MAX_FIRST_INFERENCES = 64

# The trace of the worker whose loading thread is running; unset elsewhere (see the docstring).
_ACTIVE: contextvars.ContextVar[StartupTrace | None] = contextvars.ContextVar(
    "warmgate_startup_trace", default=None
)


@dataclass(frozen=True)
class Step:
    name: str
    # None when the step was reported after the fact without its start (the server's own warmup
    # reports first-call latencies once every batch size is done).
    started_s: float | None
    seconds: float
    detail: str = ""


@dataclass
class StartupTrace:
    """One worker's start-up steps. Appended from the loading thread and the inference threads,
    read by the event loop: a lock keeps the list whole."""

    worker: str
    clock: Callable[[], float] = time.perf_counter
    wall_clock: Callable[[], float] = time.time
    # In the order steps started: a timed block takes its place when it starts (None until it
    # ends), so an enclosing step (runtime load) comes before what it encloses (weights read).
    steps: list[Step | None] = field(default_factory=list)
    _first_seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.started_at = self.wall_clock()

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        """Time the block as one step (filled in when it ends, also when it raised)."""
        with self._lock:
            slot = len(self.steps)
            self.steps.append(None)
        started = self.clock()
        try:
            yield
        finally:
            step = Step(name, round(started - self.started, 6), round(self.clock() - started, 6), detail)
            with self._lock:
                self.steps[slot] = step

    def record(self, name: str, seconds: float, started_s: float | None = None, detail: str = "") -> None:
        """A step measured elsewhere; `started_s` (since the worker started) when known."""
        start = None if started_s is None else round(started_s, 6)
        with self._lock:
            self.steps.append(Step(name, start, round(seconds, 6), detail))

    def first_inference(self, key: str, seconds: float) -> None:
        """The first request of a shape served after ready; later ones of that shape are not
        start-up. `key` is the shape's label ("bs4 dims 16")."""
        with self._lock:
            if key in self._first_seen or len(self._first_seen) >= MAX_FIRST_INFERENCES:
                return
            self._first_seen.add(key)
        # Recorded as the request ends: its start is now less its duration.
        self.record(f"first inference {key}", seconds, self.clock() - self.started - seconds)

    def document(self) -> dict[str, Any]:
        with self._lock:
            steps = [step for step in self.steps if step is not None]
        return {
            "schema_version": SCHEMA_VERSION,
            "worker": self.worker,
            "started_at": self.started_at,
            "steps": [
                {"name": s.name, "started_s": s.started_s, "seconds": s.seconds, "detail": s.detail}
                for s in steps
            ],
        }

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this the trace `startup_step` records into, in the calling thread's context."""
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)


@contextlib.contextmanager
def startup_step(name: str, detail: str = "") -> Iterator[None]:
    """For runtimes: time the block as a start-up step of the loading worker, if there is one."""
    trace = _ACTIVE.get()
    if trace is None:
        yield
        return
    with trace.step(name, detail):
        yield
