"""What the stages hand each other and the gate: one record per shape, and the failures that end
an attempt early. Stages only observe and describe; gate.py alone turns this into `GateCheck`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from warmgate.config import Shape
from warmgate.entrypoint.engine.consistency import ShapeCheck
from warmgate.protocols import PreparedRequest
from warmgate.state import LoadTestReport, MemoryReport, ShapeReport


@dataclass
class ShapeRun:
    """One shape through an attempt. The plan stage fills the first block (payloads built once,
    here); warm and post-warm stages add their measurements to `report`."""

    shape: Shape
    request: PreparedRequest
    report: ShapeReport
    # Concurrency check: requests with distinct deterministic inputs and their golden answers.
    check_requests: list[PreparedRequest] = field(default_factory=list)
    check: ShapeCheck | None = None
    check_skipped: str = ""
    # Warm stage: latencies after the first wave; whether every warmup request succeeded; and,
    # when the same input sent twice got two answers, how they differed.
    steady: list[float] = field(default_factory=list)
    # Every warmup request in order: its latency and the worker that answered, where the server
    # names it (causes.py tells per-worker from global initialisation with it).
    warm_samples: list[tuple[float, str | None]] = field(default_factory=list)
    warmed: bool = False
    nondeterminism: str = ""
    # Post-warm stage: the serial requests after the judged first one, each after the same idle
    # gap: the steady state the first is compared with, and the noise that sets the limit.
    post_warm_baseline: list[float] = field(default_factory=list)


class StageFailure(Exception):
    """A stage could not go on; the attempt ends and the gate records one failed check."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ShapesUnavailable(StageFailure):
    """`shapes: auto` could not derive shapes from the model's metadata."""


class PayloadInvalid(StageFailure):
    """A shape's inputs or request body could not be built."""

    def __init__(self, shape: str, detail: str) -> None:
        super().__init__(detail)
        self.shape = shape


class PayloadTooLarge(StageFailure):
    """A shape's payload exceeds `warmup.max_payload_bytes`; refused before anything is sent."""

    def __init__(self, shape: str, size: int, budget: int, how: Literal["estimated", "serialised"]) -> None:
        super().__init__(f"shape {shape}: payload of {size} bytes ({how}) over the budget of {budget}")
        self.shape, self.size, self.budget, self.how = shape, size, budget, how


class ShapeFailed(StageFailure):
    """A request of the shape failed in the warm stage (`warmup`) or the post-warm check."""

    def __init__(self, stage: Literal["warmup", "post_warm"], shape: str, detail: str) -> None:
        super().__init__(detail)
        self.stage, self.shape = stage, shape


class ReadinessLost(StageFailure):
    """The server's own readiness check failed during a stage (`warming`, `load test`), or did
    not pass again before a retry."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"server readiness lost during {stage}: {reason}")
        self.stage, self.reason = stage, reason


@dataclass(frozen=True)
class Evidence:
    """Everything one attempt measured, for the gate to judge."""

    runs: list[ShapeRun]
    shapes: list[ShapeReport]
    load: LoadTestReport | None
    memory: MemoryReport
    # The failure that ended the attempt early, if one did.
    stopped_by: StageFailure | None = None
