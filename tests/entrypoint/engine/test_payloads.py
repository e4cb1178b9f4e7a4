"""Payload generation: every datatype and data source, deterministic, built once per shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warmgate.config import Datatype, Shape
from warmgate.entrypoint.engine.payloads import (
    NUMPY_DTYPES,
    WORDS,
    PayloadError,
    build_inputs,
    estimated_bytes,
    varies_by_variant,
)

DATATYPES = list(get_args(Datatype))


def make_shape(batch: int = 2, **spec: Any) -> Shape:
    spec.setdefault("dims", [3])
    return Shape.model_validate({"name": "s", "batch_size": batch, "inputs": {"x": spec}})


def one(shape: Shape, variant: int = 0) -> Any:
    [tensor] = build_inputs(shape, variant)
    return tensor


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("data", ["zero", "random"])
def test_every_datatype_builds_json_ready_data(datatype: str, data: str) -> None:
    tensor = one(make_shape(batch=2, datatype=datatype, data=data, dims=[3]))
    assert tensor.shape == (2, 3)
    flat = tensor.flat()
    assert len(flat) == 6
    # The flat values survive JSON with the types the protocol expects.
    decoded = json.loads(json.dumps(flat))
    if datatype == "BYTES":
        assert all(isinstance(v, str) for v in decoded)
    elif datatype == "BOOL":
        assert all(isinstance(v, bool) for v in decoded)
    elif datatype.startswith("FP"):
        assert all(isinstance(v, float) for v in decoded)
    else:
        assert all(isinstance(v, int) for v in decoded)
    if data == "zero":
        assert set(decoded) == ({""} if datatype == "BYTES" else {0})


def test_fp16_values_are_exact_half_precision_numbers() -> None:
    tensor = one(make_shape(datatype="FP16", data="random", dims=[8]))
    assert tensor.array.dtype == np.float16
    values = np.asarray(tensor.flat(), dtype=np.float64)
    assert np.array_equal(values, values.astype(np.float16).astype(np.float64))
    assert ((values >= 0) & (values < 1)).all()


def test_random_integers_stay_in_a_small_valid_range() -> None:
    ints = one(make_shape(datatype="INT64", data="random", dims=[500])).array
    assert ints.min() >= 0 and ints.max() < 128
    uint8 = one(make_shape(datatype="UINT8", data="random", dims=[2000])).array
    assert uint8.max() > 128  # the whole byte range for images


def test_random_data_is_deterministic_and_seedable() -> None:
    first = one(make_shape(datatype="FP32", data="random")).array
    again = one(make_shape(datatype="FP32", data="random")).array
    seeded = one(make_shape(datatype="FP32", data="random", seed=7)).array
    assert np.array_equal(first, again)
    assert not np.array_equal(first, seeded)
    assert np.array_equal(seeded, one(make_shape(datatype="FP32", data="random", seed=7)).array)


def test_variants_change_random_and_text_inputs_only() -> None:
    random_shape = make_shape(datatype="FP32", data="random")
    assert not np.array_equal(one(random_shape, 0).array, one(random_shape, 1).array)
    assert varies_by_variant(random_shape)
    zero_shape = make_shape(datatype="FP32", data="zero")
    assert np.array_equal(one(zero_shape, 0).array, one(zero_shape, 3).array)
    assert not varies_by_variant(zero_shape)


@pytest.mark.parametrize("unit", ["words", "tokens"])
def test_text_has_the_requested_length(unit: str) -> None:
    tensor = one(make_shape(batch=3, datatype="BYTES", data="text", dims=[1], length=12, unit=unit))
    texts = tensor.flat()
    assert len(texts) == 3
    for text in texts:
        words = text.split(" ")
        assert len(words) == 12
        assert set(words) <= set(WORDS)
    assert len(set(texts)) == 3  # distinct per batch element


def test_literal_scalar_is_broadcast_and_list_repeated_over_the_batch() -> None:
    scalar = one(make_shape(batch=2, datatype="INT32", data="literal", value=7, dims=[2, 2]))
    assert scalar.flat() == [7] * 8
    row = one(make_shape(batch=2, datatype="FP32", data="literal", value=[1, 2, 3]))
    assert row.nested() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    whole = one(make_shape(batch=2, datatype="INT64", data="literal", value=[[1, 2, 3], [4, 5, 6]]))
    assert whole.flat() == [1, 2, 3, 4, 5, 6]
    text = one(make_shape(batch=0, datatype="BYTES", data="literal", value=["a b", "c"], dims=[2]))
    assert text.flat() == ["a b", "c"]


def test_literal_of_the_wrong_size_names_shape_and_input() -> None:
    with pytest.raises(PayloadError, match=r"shape s, input x: literal value has 2 elements, expected 3"):
        build_inputs(make_shape(datatype="FP32", data="literal", value=[1, 2]))
    with pytest.raises(PayloadError, match="shape s, input x: literal value is not INT32 data"):
        build_inputs(make_shape(datatype="INT32", data="literal", value="abc"))


def test_file_data_npy_raw_and_length_prefixed_bytes(tmp_path: Path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.arange(3, dtype=np.float32))
    assert one(make_shape(datatype="FP32", data="file", file=npy)).nested() == [[0.0, 1.0, 2.0]] * 2
    raw = tmp_path / "x.bin"
    raw.write_bytes(np.arange(6, dtype="<i2").tobytes())
    assert one(make_shape(datatype="INT16", data="file", file=raw)).flat() == [0, 1, 2, 3, 4, 5]
    strings = tmp_path / "s.bin"
    strings.write_bytes(b"".join(len(s).to_bytes(4, "little") + s for s in (b"hello", b"", b"world")))
    assert one(make_shape(batch=0, datatype="BYTES", data="file", file=strings)).flat() == [
        "hello",
        "",
        "world",
    ]


def test_file_problems_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="does not exist"):
        build_inputs(make_shape(datatype="FP32", data="file", file=tmp_path / "missing.bin"))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00" * 5)
    with pytest.raises(PayloadError, match="not a whole number of FP32 elements"):
        build_inputs(make_shape(datatype="FP32", data="file", file=odd))
    truncated = tmp_path / "t.bin"
    truncated.write_bytes((10).to_bytes(4, "little") + b"abc")
    with pytest.raises(PayloadError, match="runs past the end"):
        build_inputs(make_shape(batch=0, datatype="BYTES", data="file", file=truncated))


def test_estimate_is_known_before_generation() -> None:
    shape = make_shape(batch=8, datatype="FP32", data="random", dims=[3, 64, 64])
    assert estimated_bytes(shape) == 8 * 3 * 64 * 64 * 4
    assert estimated_bytes(make_shape(batch=0, datatype="FP16", dims=[10])) == 20


@settings(max_examples=40, deadline=None)
@given(
    datatype=st.sampled_from(DATATYPES),
    batch=st.integers(0, 3),
    dims=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    data=st.sampled_from(["zero", "random"]),
)
def test_any_shape_builds_with_its_declared_shape_and_dtype(
    datatype: str, batch: int, dims: list[int], data: str
) -> None:
    tensor = one(make_shape(batch=batch, datatype=datatype, data=data, dims=dims))
    expected = (batch, *dims) if batch else tuple(dims)
    assert tensor.shape == expected
    assert tensor.array.dtype == NUMPY_DTYPES[datatype]
    assert np.asarray(tensor.nested(), dtype=object).shape == expected
