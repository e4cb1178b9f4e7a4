"""The concurrency safety check: answers given under concurrent load against golden answers.

A model instance shared by threads without a lock, or a reused output buffer, returns another
request's outputs (or a blend) only when requests overlap; no latency check notices. The golden
answers are recorded one request at a time during warmup; in the load test a fraction of the
requests reuse those exact inputs at full concurrency and every answer is compared: exactly for
integer, boolean and BYTES outputs, within rtol/atol for floating point (batched kernels may
legitimately differ in the last bits).

Outputs come from a server and are checked by the protocol's decoder, but the comparison does not
rely on it: any two `Outputs` compare to a verdict, never an exception (a value too large for a
float, a datatype that is not a string, values that are not numbers after all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmgate.protocols import Outputs, OutputTensor
from warmgate.state import ConcurrencyCheckReport

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
# Values shown in a mismatch message are cut to this many characters.
SHOWN_CHARS = 40


@dataclass(frozen=True)
class Comparison:
    matched: bool
    # Largest |expected - got| over floating-point elements (0.0 when there were none).
    max_abs_deviation: float
    # Where and how they differ ("output probs[3]: expected 0.25, got 0.75"); empty when matched.
    detail: str = ""


def compare_outputs(expected: Outputs, got: Outputs, rtol: float, atol: float) -> Comparison:
    deviation = 0.0
    missing = sorted(set(expected) - set(got))
    if missing:
        return Comparison(False, deviation, f"output {missing[0]} missing")
    for name in expected:
        result = compare_tensor(expected[name], got[name], rtol, atol)
        deviation = max(deviation, result.max_abs_deviation)
        if not result.matched:
            return Comparison(False, deviation, result.detail)
    return Comparison(True, deviation)


def compare_tensor(expected: OutputTensor, got: OutputTensor, rtol: float, atol: float) -> Comparison:
    name = expected.name
    if expected.shape is not None and got.shape is not None and expected.shape != got.shape:
        return Comparison(
            False, 0.0, f"output {name}: shape {list(got.shape)}, expected {list(expected.shape)}"
        )
    if len(expected.data) != len(got.data):
        return Comparison(False, 0.0, f"output {name}: {len(got.data)} values, expected {len(expected.data)}")
    if _is_float(expected) or _is_float(got):
        try:
            want = np.asarray(expected.data, dtype=np.float64)
            have = np.asarray(got.data, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            pass  # not numbers after all (or beyond a float): compare exactly below
        else:
            return _compare_floats(name, want, have, rtol, atol)
    for index, (want_item, have_item) in enumerate(zip(expected.data, got.data, strict=True)):
        if want_item != have_item or type(want_item) is not type(have_item):
            return Comparison(
                False, 0.0, f"output {name}[{index}]: expected {_show(want_item)}, got {_show(have_item)}"
            )
    return Comparison(True, 0.0)


def _is_float(tensor: OutputTensor) -> bool:
    if tensor.datatype is not None:
        return str(tensor.datatype).upper() in FLOAT_TYPES
    # JSON without a declared datatype: any float among the values makes it a float output.
    return any(isinstance(v, float) for v in tensor.data)


def _compare_floats(
    name: str, want: np.ndarray[Any, Any], have: np.ndarray[Any, Any], rtol: float, atol: float
) -> Comparison:
    if want.size == 0:
        return Comparison(True, 0.0)
    # Equal values (the same infinity included, whose difference is NaN) and NaN against NaN match;
    # otherwise both must be finite and within tolerance (rtol * inf would admit anything).
    same = (want == have) | (np.isnan(want) & np.isnan(have))
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.where(same, 0.0, np.abs(want - have))
        finite = np.isfinite(want) & np.isfinite(have)
        close = same | (finite & (difference <= atol + rtol * np.abs(want)))
    deviation = float(np.max(np.where(np.isnan(difference), np.inf, difference)))
    if bool(np.all(close)):
        return Comparison(True, deviation)
    index = int(np.argmin(close))
    return Comparison(
        False,
        deviation,
        f"output {name}[{index}]: expected {_show(float(want[index]))}, got {_show(float(have[index]))}",
    )


def _show(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        text = f"{value:.6g}"
    elif isinstance(value, bytes):
        text = repr(value[:SHOWN_CHARS])
    else:
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class ShapeCheck:
    """Golden answers of one shape and the tally of its comparisons under load."""

    def __init__(self, shape_name: str, rtol: float, atol: float) -> None:
        self.shape_name = shape_name
        self.rtol = rtol
        self.atol = atol
        self.golden: list[Outputs] = []
        self.checked = 0
        self.matched = 0
        self.max_abs_deviation = 0.0
        self.first_mismatch = ""

    def check(self, request_index: int, variant: int, got: Outputs) -> bool:
        result = compare_outputs(self.golden[variant], got, self.rtol, self.atol)
        self.checked += 1
        self.max_abs_deviation = max(self.max_abs_deviation, result.max_abs_deviation)
        if result.matched:
            self.matched += 1
        elif not self.first_mismatch:
            self.first_mismatch = f"request {request_index} (input {variant}), {result.detail}"
        return result.matched

    def record_failure(self, request_index: int, variant: int, reason: str) -> None:
        """An answer under load that could not be compared at all counts as a mismatch."""
        self.checked += 1
        if not self.first_mismatch:
            self.first_mismatch = f"request {request_index} (input {variant}), {reason}"

    @property
    def mismatches(self) -> int:
        return self.checked - self.matched

    def report(self) -> ConcurrencyCheckReport:
        return ConcurrencyCheckReport(
            variants=len(self.golden),
            checked=self.checked,
            matched=self.matched,
            mismatches=self.mismatches,
            max_abs_deviation=self.max_abs_deviation if self.checked else None,
            first_mismatch=self.first_mismatch,
        )
