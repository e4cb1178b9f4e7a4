"""Comparing answers: exact for integers, booleans and strings; within tolerance for floats."""

from __future__ import annotations

from typing import Any

from warmgate.entrypoint.engine.consistency import ShapeCheck, compare_outputs
from warmgate.protocols import OutputTensor


def out(
    data: list[Any], datatype: str | None = "FP32", shape: tuple[int, ...] | None = ()
) -> dict[str, OutputTensor]:
    shape = (len(data),) if shape == () else shape
    return {"y": OutputTensor(name="y", data=data, shape=shape, datatype=datatype)}


def test_floats_within_tolerance_match_and_report_the_deviation() -> None:
    result = compare_outputs(out([1.0, 2.0]), out([1.0000001, 2.0]), rtol=1e-3, atol=1e-5)
    assert result.matched
    assert 0 < result.max_abs_deviation < 1e-6


def test_floats_beyond_tolerance_name_the_element() -> None:
    result = compare_outputs(out([0.25, 0.5, 0.75]), out([0.25, 0.75, 0.75]), rtol=1e-3, atol=1e-5)
    assert not result.matched
    assert result.detail == "output y[1]: expected 0.5, got 0.75"
    assert result.max_abs_deviation == 0.25


def test_integers_and_strings_must_be_exact() -> None:
    assert not compare_outputs(out([1, 2], "INT64"), out([1, 3], "INT64"), rtol=1, atol=1).matched
    text = compare_outputs(out(["cat"], "BYTES"), out(["dog"], "BYTES"), rtol=1, atol=1)
    assert text.detail == "output y[0]: expected 'cat', got 'dog'"
    # JSON without a datatype: floats are compared with tolerance, the rest exactly.
    assert compare_outputs(out([0.1, 1], None), out([0.1000000001, 1], None), rtol=1e-6, atol=0).matched
    assert not compare_outputs(out([True], None), out([1], None), rtol=0, atol=0).matched


def test_shape_length_and_missing_outputs() -> None:
    assert compare_outputs(out([1.0, 2.0], shape=(2, 1)), out([1.0, 2.0], shape=(1, 2)), 0, 0).detail == (
        "output y: shape [1, 2], expected [2, 1]"
    )
    unshaped = compare_outputs(out([1.0, 2.0], shape=None), {"y": OutputTensor("y", [1.0])}, 0, 0)
    assert unshaped.detail == "output y: 1 values, expected 2"
    assert compare_outputs(out([1.0]), {}, 0, 0).detail == "output y missing"


def test_nan_equals_nan_but_not_a_number() -> None:
    nan = float("nan")
    assert compare_outputs(out([nan, 1.0]), out([nan, 1.0]), 0, 0).matched
    assert not compare_outputs(out([nan]), out([1.0]), 0, 0).matched


def test_shape_check_tallies_and_keeps_the_first_mismatch() -> None:
    check = ShapeCheck("bs1", rtol=1e-3, atol=1e-5)
    check.golden = [out([1.0]), out([2.0])]
    assert check.check(0, 0, out([1.0]))
    assert not check.check(5, 1, out([1.0]))
    assert not check.check(9, 0, out([3.0]))
    check.record_failure(12, 1, "response has no outputs")
    report = check.report()
    assert (report.checked, report.matched, report.mismatches, report.variants) == (4, 1, 3, 2)
    assert report.first_mismatch == "request 5 (input 1), output y[0]: expected 2, got 1"
    assert report.max_abs_deviation == 2.0


def test_the_same_infinity_matches_and_opposite_infinities_do_not() -> None:
    # inf - inf is NaN: before, a model answering +inf twice was called non-deterministic.
    inf = float("inf")
    assert compare_outputs(out([inf, -inf, 1.0]), out([inf, -inf, 1.0]), 0, 0).matched
    opposite = compare_outputs(out([inf]), out([-inf]), 1e-3, 1e-5)
    assert not opposite.matched and opposite.detail == "output y[0]: expected inf, got -inf"
    assert not compare_outputs(out([inf]), out([1.0]), 1e-3, 1e-5).matched


def test_any_two_outputs_compare_to_a_verdict_never_an_exception() -> None:
    # An integer beyond a float in a float output (OverflowError before), a datatype that is not
    # a string (AttributeError before), values that are not numbers in a float output.
    huge = compare_outputs(out([10**400, 1.0], "FP32"), out([10**400, 1.0], "FP32"), 0, 0)
    assert huge.matched
    assert not compare_outputs(out([10**400], "FP32"), out([1.0], "FP32"), 0, 0).matched
    odd_type = {"y": OutputTensor("y", [1.0], (1,), datatype=5)}  # type: ignore[arg-type]
    assert compare_outputs(odd_type, odd_type, 0, 0).matched
    mixed = compare_outputs(out([{"a": 1}, 1.5], None), out([{"a": 2}, 1.5], None), 0, 0)
    assert mixed.detail == "output y[0]: expected {'a': 1}, got {'a': 2}"
