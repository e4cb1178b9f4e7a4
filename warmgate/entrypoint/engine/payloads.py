"""Input tensors for a warmup shape: zero / random / file / literal / text, for every OIP datatype.

Tensors are generated once per shape (and once per concurrency-check variant) with numpy and
then serialised once by the protocol adapter; nothing here runs per request. Generation is
deterministic: an input without a `seed` gets one derived from the shape and input names, so two
runs (and two pods) send the same bytes.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from warmgate.config import Shape, TensorInput
from warmgate.tensors import NUMPY_DTYPES, Tensor

# Random integers stay below 128: valid for INT8, and for embedding inputs (token ids, class ids)
# a small id is in range for any real vocabulary, where a random INT64 would be an index error.
RANDOM_INT_HIGH = 128
# Random BYTES elements are this many words: short text, the usual content of a string input.
RANDOM_BYTES_WORDS = 8
# Estimated serialised size of one BYTES word ("people ", with JSON quoting amortised).
BYTES_PER_WORD_ESTIMATE = 7

# Common English words that are a single token in GPT-2's BPE and in BERT's WordPiece
# vocabularies, so `unit: tokens` gets close to the requested token count without a tokenizer.
_WORD_TEXT = (
    "the of and to in is was for on are with as his they be at one have this from or had by hot "
    "word but what some we can out other were all there when up use your how said an each she "
    "which do their time if will way about many then them write would like so these her long "
    "make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give "
    "our under name very through just form sentence great think say help low line differ turn "
    "cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such "
    "follow act why ask men change went light kind off need house picture try us again animal "
    "point mother world near build self earth father head stand own page should country found"
)
WORDS = tuple(_WORD_TEXT.split())


class PayloadError(Exception):
    """An input cannot be built from its configuration; the message names shape and input."""


def full_dims(shape: Shape, spec: TensorInput) -> tuple[int, ...]:
    dims = tuple(spec.dims)
    return (shape.batch_size, *dims) if shape.batch_size > 0 else dims


def estimated_bytes(shape: Shape) -> int:
    """The raw size of a shape's inputs, known before anything is generated (for the byte budget)."""
    total = 0
    for spec in shape.tensor_inputs.values():
        elements = math.prod(full_dims(shape, spec))
        if spec.datatype == "BYTES":
            words = spec.length if spec.data == "text" and spec.length else RANDOM_BYTES_WORDS
            total += elements * words * BYTES_PER_WORD_ESTIMATE
        else:
            total += elements * NUMPY_DTYPES[spec.datatype].itemsize
    return total


def default_seed(shape_name: str, input_name: str) -> int:
    return zlib.crc32(f"{shape_name}/{input_name}".encode())


def build_inputs(shape: Shape, variant: int = 0) -> list[Tensor]:
    """The inputs of one request of `shape`. Variant 0 is the warmup payload; variants 1, 2, ...
    change the seeded (random and text) inputs only, so their answers tell requests apart."""
    return [_build_one(shape, name, spec, variant) for name, spec in shape.tensor_inputs.items()]


def varies_by_variant(shape: Shape) -> bool:
    """Whether variants differ at all (zero, file and literal inputs are the same in every one)."""
    return any(spec.data in ("random", "text") for spec in shape.tensor_inputs.values())


def _build_one(shape: Shape, name: str, spec: TensorInput, variant: int) -> Tensor:
    where = f"shape {shape.name}, input {name}"
    dims = full_dims(shape, spec)
    seed = spec.seed if spec.seed is not None else default_seed(shape.name, name)
    # SeedSequence mixes the variant in properly; seed + variant would make variant 1 of seed 7
    # the same stream as variant 0 of seed 8.
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, variant]))
    try:
        if spec.data == "zero":
            array = _zeros(spec.datatype, dims)
        elif spec.data == "random":
            array = _random(spec.datatype, dims, rng)
        elif spec.data == "text":
            assert spec.length is not None  # guaranteed by config validation
            array = _text(dims, spec.length, rng)
        elif spec.data == "literal":
            array = _fit(_literal(spec.datatype, spec.value), shape, spec, "literal value")
        else:
            assert spec.file is not None  # guaranteed by config validation
            array = _fit(_read_file(spec.datatype, spec.file), shape, spec, f"file {spec.file}")
    except PayloadError as exc:
        raise PayloadError(f"{where}: {exc}") from None
    return Tensor(name=name, datatype=spec.datatype, array=array)


def _zeros(datatype: str, dims: tuple[int, ...]) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":
        # An empty string is BYTES' zero (as in Triton's zero_data for strings).
        return np.full(dims, "", dtype=object)
    return np.zeros(dims, dtype=NUMPY_DTYPES[datatype])


def _random(datatype: str, dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        return _text(dims, RANDOM_BYTES_WORDS, rng)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if dtype.kind in "iu":
        high = 256 if datatype == "UINT8" else RANDOM_INT_HIGH
        return rng.integers(0, high, size=dims).astype(dtype)
    # Uniform [0, 1): a valid normalised pixel, probability or feature for most models.
    return rng.random(size=dims).astype(dtype)


def _text(dims: tuple[int, ...], length: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    count = math.prod(dims)
    picks = rng.integers(0, len(WORDS), size=(count, length))
    texts = [" ".join(WORDS[i] for i in row) for row in picks]
    array = np.empty(count, dtype=object)
    array[:] = texts
    return array.reshape(dims)


def _literal(datatype: str, value: Any) -> np.ndarray[Any, Any]:
    try:
        if datatype == "BYTES":
            array = np.asarray(value, dtype=object)
            if array.dtype != object or any(isinstance(v, (list, dict)) for v in array.reshape(-1)):
                raise ValueError("ragged nested list")
            return np.vectorize(str, otypes=[object])(array) if array.size else array
        return np.asarray(value, dtype=NUMPY_DTYPES[datatype])
    except (ValueError, TypeError, OverflowError) as exc:
        raise PayloadError(f"literal value is not {datatype} data: {exc}") from None


def _read_file(datatype: str, path: Path) -> np.ndarray[Any, Any]:
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if datatype == "BYTES":
                return np.vectorize(_as_str, otypes=[object])(array) if array.size else array.astype(object)
            return array.astype(NUMPY_DTYPES[datatype], copy=False)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PayloadError(f"file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise PayloadError(f"cannot read {path}: {exc}") from None
    if datatype == "BYTES":
        return _parse_length_prefixed(raw, path)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise PayloadError(f"{path}: {len(raw)} bytes is not a whole number of {datatype} elements")
    return np.frombuffer(raw, dtype=dtype).astype(NUMPY_DTYPES[datatype])


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse_length_prefixed(raw: bytes, path: Path) -> np.ndarray[Any, Any]:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length, then the bytes."""
    items: list[str] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise PayloadError(f"{path}: truncated BYTES length prefix at byte {offset}")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise PayloadError(f"{path}: BYTES element at byte {offset - 4} runs past the end of the file")
        items.append(raw[offset : offset + size].decode("utf-8", "replace"))
        offset += size
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _fit(array: np.ndarray[Any, Any], shape: Shape, spec: TensorInput, what: str) -> np.ndarray[Any, Any]:
    """Shape literal or file data like Triton's warmup does: data for one batch element is repeated
    over the batch; data for the whole batch is used as is; a scalar is broadcast."""
    dims = tuple(spec.dims)
    full = full_dims(shape, spec)
    if array.size == 1:
        return np.broadcast_to(array.reshape(()), full).copy()
    if array.size == math.prod(full):
        return array.reshape(full)
    if array.size == math.prod(dims) and shape.batch_size > 0:
        one = array.reshape(dims)
        return np.broadcast_to(one, full).copy()
    expected = f"{math.prod(dims)} (dims {list(dims)})"
    if shape.batch_size > 0:
        expected += f" or {math.prod(full)} (with batch {list(full)})"
    raise PayloadError(f"{what} has {array.size} elements, expected {expected}")
