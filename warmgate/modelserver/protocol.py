"""Open Inference Protocol v2 (KServe v2 REST) request decoding and response encoding.

Every client mistake becomes a `ProtocolError` with its HTTP status and a one-line message; the
server turns it into `{"error": message}`. Tensor data may be flat or nested, row-major.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmgate.modelserver.runtime.base import ModelInfo, TensorSpec
from warmgate.tensors import FLOAT_TYPES, INTEGER_TYPES, NUMPY_DTYPES


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


def decode_request(body: Any, info: ModelInfo, max_batch_size: int) -> InferRequest:
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("inputs must be a non-empty list")
    specs = {t.name: t for t in info.inputs}
    inputs: dict[str, np.ndarray] = {}
    for index, raw in enumerate(raw_inputs):
        name, array = _decode_tensor(raw, index, specs)
        if name in inputs:
            raise ProtocolError(f"input {name!r} given twice")
        inputs[name] = array
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise ProtocolError(
            f"missing input(s) {', '.join(map(repr, missing))}; the model takes {_names(info.inputs)}"
        )
    batch_size = _batch_size(inputs, info, max_batch_size)
    return InferRequest(request_id, inputs, _requested_outputs(body.get("outputs"), info), batch_size)


def _decode_tensor(raw: Any, index: int, specs: Mapping[str, TensorSpec]) -> tuple[str, np.ndarray]:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"{where}.name must be a string")
    spec = specs.get(name)
    if spec is None:
        raise ProtocolError(f"unknown input {name!r}; the model takes {_names(specs.values())}")
    where = f"input {name!r}"
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ProtocolError(f"{where}: shape must be a list of integers")
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: shape {shape} has a negative dimension")
    datatype = raw.get("datatype")
    if datatype not in NUMPY_DTYPES:
        raise ProtocolError(f"{where}: unsupported datatype {datatype!r}")
    if datatype != spec.datatype:
        raise ProtocolError(f"{where}: datatype {datatype} does not match the model's {spec.datatype}")
    _check_shape(where, shape, spec)
    if "data" not in raw:
        raise ProtocolError(f"{where}: no data (binary tensor data is not supported)")
    array = _to_array(where, raw["data"], datatype)
    count = math.prod(shape)
    if array.size != count:
        raise ProtocolError(f"{where}: shape {shape} needs {count} elements, data has {array.size}")
    return name, array.reshape(shape)


def _check_shape(where: str, shape: list[int], spec: TensorSpec) -> None:
    if len(shape) != len(spec.shape):
        raise ProtocolError(
            f"{where}: shape {shape} has rank {len(shape)}, the model expects {list(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if want not in (-1, got):
            raise ProtocolError(
                f"{where}: shape {shape} differs from the model's {list(spec.shape)} at axis {axis}"
            )


def _to_array(where: str, data: Any, datatype: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    target = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        return np.array([v.encode("utf-8") for v in flat], dtype=object)
    try:
        # Inferring first rejects strings ("1.5" would silently parse as a float) and ragged nesting.
        array = np.asarray(data)
    except ValueError:
        raise ProtocolError(f"{where}: data is ragged (nested lists of different lengths)") from None
    kind = array.dtype.kind
    if datatype == "BOOL":
        ok = kind == "b" or array.size == 0
    elif datatype in INTEGER_TYPES:
        ok = kind in "iu" or array.size == 0
        if ok and array.size:
            info = np.iinfo(target)
            if array.min() < info.min or array.max() > info.max:
                raise ProtocolError(f"{where}: values out of range for {datatype}")
    else:
        ok = kind in "iuf" or array.size == 0
    if not ok:
        expected = (
            "true/false" if datatype == "BOOL" else "integers" if datatype in INTEGER_TYPES else "numbers"
        )
        raise ProtocolError(f"{where}: {datatype} data must be {expected}")
    return array.astype(target, copy=False)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


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


def _requested_outputs(raw: Any, info: ModelInfo) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise ProtocolError("outputs must be a list of objects with a name")
    known = {t.name for t in info.outputs}
    names = tuple(o["name"] for o in raw)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ProtocolError(
            f"unknown output(s) {', '.join(map(repr, unknown))}; the model has {_names(info.outputs)}"
        )
    return names


def encode_response(
    info: ModelInfo, request: InferRequest, results: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    datatypes = {t.name: t.datatype for t in info.outputs}
    names = request.outputs if request.outputs is not None else tuple(datatypes)
    body: dict[str, Any] = {
        "model_name": info.name,
        "model_version": info.version,
        "outputs": [_encode_tensor(name, datatypes[name], results[name]) for name in names],
    }
    if request.id is not None:
        body["id"] = request.id
    return body


def _encode_tensor(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    if datatype == "BYTES":
        data: list[Any] = [_text(v) for v in array.reshape(-1)]
    elif datatype in FLOAT_TYPES and array.dtype == np.float16:
        # float16.tolist() gives Python floats already; the cast keeps their shortest repr stable.
        data = array.astype(np.float32).reshape(-1).tolist()
    else:
        data = array.reshape(-1).tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _names(tensors: Sequence[TensorSpec] | Any) -> str:
    return ", ".join(repr(t.name) for t in tensors)


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "versions": [info.version],
        "platform": info.platform,
        "inputs": [t.as_json() for t in info.inputs],
        "outputs": [t.as_json() for t in info.outputs],
        # Not part of the protocol's required fields; lets a client see what really runs.
        "parameters": {"device": info.device, "providers": list(info.providers)},
    }
