"""The checks every front end shares, from tensor headers and numpy arrays to a whole request.

The REST decoder (protocol.py) and the gRPC decoder (grpc_codec.py) each read their wire format
into tensor headers and arrays and pass them through these functions, so a mistake reads the same
over either protocol: a `ProtocolError` with the HTTP status and a one-line message, which the HTTP
server answers as `{"error": message}` and the gRPC server as a status code with the message as
its details.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmgate.modelserver.runtime.base import ModelInfo, TensorSpec
from warmgate.tensors import INTEGER_TYPES, NUMPY_DTYPES, RawContentsError, from_raw

# How much of a bad value a message quotes.
_QUOTE = 40


class ProtocolError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    # Requested outputs, in order; None means all.
    outputs: tuple[str, ...] | None
    batch_size: int
    # Outputs to answer as raw bytes (the REST binary tensor extension); the others as JSON data.
    binary_outputs: frozenset[str] = frozenset()


def input_spec(name: str, specs: Mapping[str, TensorSpec]) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise ProtocolError(f"unknown input {name!r}; the model takes {tensor_names(specs.values())}")
    return spec


def check_header(where: str, shape: Sequence[int], datatype: Any, spec: TensorSpec) -> str:
    """The shape (a list of integers) and datatype a client declared, against the model's; returns
    the datatype."""
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape {list(shape)} has a negative dimension")
    if datatype not in NUMPY_DTYPES:
        raise ProtocolError(f"{where}: unsupported datatype {quote(datatype)}")
    if datatype != spec.datatype:
        raise ProtocolError(f"{where}: datatype {datatype} does not match the model's {spec.datatype}")
    if len(shape) != len(spec.shape):
        raise ProtocolError(
            f"{where}: shape {list(shape)} has rank {len(shape)}, the model expects {list(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want not in (-1, got):
            raise ProtocolError(
                f"{where}: shape {list(shape)} differs from the model's {list(spec.shape)} at axis {axis}"
            )
    return spec.datatype


def check_count(where: str, shape: Sequence[int], array: np.ndarray) -> np.ndarray:
    """`array` (flat data) in the declared shape, or the one-line count mismatch."""
    count = math.prod(shape)
    if array.size != count:
        raise ProtocolError(f"{where}: shape {list(shape)} needs {count} elements, data has {array.size}")
    return array.reshape(tuple(shape))


def check_range(where: str, array: np.ndarray, datatype: str) -> None:
    """Integers that do not fit the declared type are refused, never wrapped."""
    if datatype in INTEGER_TYPES and array.size:
        limits = np.iinfo(NUMPY_DTYPES[datatype])
        if array.min() < limits.min or array.max() > limits.max:
            raise ProtocolError(f"{where}: values out of range for {datatype}")


def raw_tensor(where: str, datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """A tensor from its raw contents (gRPC raw_input_contents, REST binary data)."""
    try:
        return from_raw(datatype, list(shape), raw)
    except RawContentsError as exc:
        raise ProtocolError(f"{where}: {exc}") from None


def validated_request(
    request_id: str | None,
    inputs: Sequence[tuple[str, np.ndarray]],
    info: ModelInfo,
    max_batch_size: int,
    *,
    outputs: tuple[str, ...] | None,
    binary_outputs: frozenset[str] = frozenset(),
) -> InferRequest:
    """The whole request from its decoded inputs: each given once, none missing, one batch size
    within the limit, requested outputs known to the model."""
    named: dict[str, np.ndarray] = {}
    for name, array in inputs:
        if name in named:
            raise ProtocolError(f"input {name!r} given twice")
        named[name] = array
    missing = [t.name for t in info.inputs if t.name not in named]
    if missing:
        raise ProtocolError(
            f"missing input(s) {', '.join(map(repr, missing))}; the model takes {tensor_names(info.inputs)}"
        )
    batch_size = _batch_size(named, info, max_batch_size)
    if outputs is not None:
        known = {t.name for t in info.outputs}
        unknown = [n for n in outputs if n not in known]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            raise ProtocolError(f"unknown output(s) {listed}; the model has {tensor_names(info.outputs)}")
    return InferRequest(request_id, named, outputs, batch_size, binary_outputs)


def _batch_size(inputs: Mapping[str, np.ndarray], info: ModelInfo, max_batch_size: int) -> int:
    if not info.batched:
        return 1
    sizes = {name: array.shape[0] for name, array in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise ProtocolError(f"inputs disagree on the batch size (first dimension): {sizes}")
    size = next(iter(sizes.values()))
    if size < 1:
        raise ProtocolError("batch size (first dimension) must be at least 1")
    if size > max_batch_size:
        raise ProtocolError(f"batch size {size} exceeds the server's maximum of {max_batch_size}")
    return int(size)


def tensor_names(tensors: Iterable[TensorSpec]) -> str:
    return ", ".join(repr(t.name) for t in tensors)


def quote(value: Any) -> str:
    """A client's bad value in a message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."
