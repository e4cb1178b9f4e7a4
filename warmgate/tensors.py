"""Open Inference Protocol tensor datatypes, their numpy equivalents, and one input tensor.

A leaf module: the entrypoint builds payloads with it, the protocols encode and decode with it, the
reference server decodes requests with it. One table for the whole product. BF16 has no numpy dtype;
a model that needs it is served with FP32 inputs and an in-model cast. BYTES elements are Python
bytes objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

NUMPY_DTYPES: Mapping[str, np.dtype[Any]] = MappingProxyType(
    {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype(np.uint8),
        "UINT16": np.dtype(np.uint16),
        "UINT32": np.dtype(np.uint32),
        "UINT64": np.dtype(np.uint64),
        "INT8": np.dtype(np.int8),
        "INT16": np.dtype(np.int16),
        "INT32": np.dtype(np.int32),
        "INT64": np.dtype(np.int64),
        "FP16": np.dtype(np.float16),
        "FP32": np.dtype(np.float32),
        "FP64": np.dtype(np.float64),
        "BYTES": np.dtype(object),
    }
)

INTEGER_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass(frozen=True)
class Tensor:
    """One input of one request: its full shape includes the batch dimension when there is one."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    def flat(self) -> list[Any]:
        """Row-major flat values, JSON-ready (BYTES as str, FP16 as Python float)."""
        values = self.array.reshape(-1).tolist()
        if self.datatype == "BYTES":
            return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        return values

    def nested(self) -> Any:
        """Nested lists in the tensor's shape, for protocols that take row or column form."""
        if self.datatype == "BYTES":
            return np.asarray(self.flat(), dtype=object).reshape(self.array.shape).tolist()
        return self.array.tolist()


def from_numpy(dtype: np.dtype) -> str:
    """The OIP datatype of a numpy dtype (strings and objects are BYTES)."""
    if dtype.kind in "OSU":
        return "BYTES"
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


# ---- raw contents: gRPC raw_input_contents / raw_output_contents and HTTP binary_data ---------
# The wire form Triton defined and KServe adopted: fixed-size types as their little-endian bytes in
# row-major order (BOOL one byte each); BYTES as each element's length (uint32, little-endian)
# followed by its bytes.

BYTES_LENGTH = np.dtype("<u4")


class RawContentsError(ValueError):
    """Raw bytes that cannot be the tensor they claim to be (one line, no traceback)."""


def element_count(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def to_raw(datatype: str, array: np.ndarray[Any, Any]) -> bytes:
    """The raw contents of `array` as an OIP tensor of `datatype`."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.reshape(-1).tolist():
            item = value if isinstance(value, bytes) else str(value).encode()
            parts.append(len(item).to_bytes(4, "little"))
            parts.append(item)
        return b"".join(parts)
    wire = NUMPY_DTYPES[datatype].newbyteorder("<")
    return np.ascontiguousarray(array, dtype=wire).tobytes()


def from_raw(datatype: str, shape: tuple[int, ...] | list[int], raw: bytes) -> np.ndarray[Any, Any]:
    """The tensor `raw` holds; raises RawContentsError when its size does not fit the shape."""
    if any(int(dim) < 0 for dim in shape):
        raise RawContentsError(f"shape {list(shape)} has a negative dimension")
    count = element_count(shape)
    if datatype == "BYTES":
        return np.asarray(_split_bytes(raw, count), dtype=object).reshape(tuple(shape))
    if datatype not in NUMPY_DTYPES:
        raise RawContentsError(f"unknown datatype {datatype[:40]!r}")
    wire = NUMPY_DTYPES[datatype].newbyteorder("<")
    if len(raw) != count * wire.itemsize:
        raise RawContentsError(
            f"{len(raw)} raw bytes cannot be a {datatype} tensor of shape {list(shape)} "
            f"({count * wire.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=wire).astype(NUMPY_DTYPES[datatype], copy=False).reshape(tuple(shape))


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise RawContentsError(f"BYTES contents end inside an element length, at byte {offset}")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(raw):
            raise RawContentsError(
                f"BYTES element {len(items)} claims {length} bytes; {len(raw) - offset} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
        if len(items) > count:
            raise RawContentsError(f"BYTES contents hold more than the {count} elements of the shape")
    if len(items) != count:
        raise RawContentsError(f"BYTES contents hold {len(items)} elements, the shape needs {count}")
    return items
