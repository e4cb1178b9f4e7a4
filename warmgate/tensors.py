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
