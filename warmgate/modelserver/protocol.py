"""Open Inference Protocol v2 REST (KServe v2) request decoding and response encoding, JSON and
the binary tensor extension.

Every client mistake becomes a `ProtocolError` with its HTTP status and a one-line message; the
server turns it into `{"error": message}`. The checks themselves live in validation.py, shared
with the gRPC decoder, so a mistake reads the same over either protocol.

JSON tensor data may be flat or nested, row-major. With the binary tensor extension (Triton's
`binary_data`), the first `Inference-Header-Content-Length` bytes of the body are the JSON header and
each input with `parameters.binary_data_size` takes that many bytes, in order, from the rest, in the
raw contents format (warmgate.tensors); outputs the request asks for as binary come back the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from warmgate.modelserver.runtime.base import ModelInfo, TensorSpec
from warmgate.modelserver.validation import (
    InferRequest,
    ProtocolError,
    check_count,
    check_header,
    check_range,
    input_spec,
    quote,
    raw_tensor,
    validated_request,
)
from warmgate.tensors import FLOAT_TYPES, INTEGER_TYPES, NUMPY_DTYPES, to_raw

# Re-exported: the REST front end and its tests take the request types from here.
__all__ = ["InferRequest", "InferResponse", "ProtocolError", "decode_request", "encode_response"]

# The binary tensor extension's names, as Triton documents them.
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"


@dataclass(frozen=True)
class InferResponse:
    body: dict[str, Any]
    # The raw contents of the binary outputs, in the order body["outputs"] lists them.
    binary: tuple[bytes, ...] = ()


# ---- REST: the body, JSON and binary --------------------------------------------------------


class BinaryData:
    """The bytes after the JSON header; inputs take their `binary_data_size` from it in order."""

    def __init__(self, data: bytes, present: bool) -> None:
        self._data = data
        self._offset = 0
        self._present = present

    def take(self, where: str, size: int) -> bytes:
        if not self._present:
            raise ProtocolError(f"{where}: parameters.{BINARY_DATA_SIZE} needs the {HEADER_LENGTH} header")
        remaining = len(self._data) - self._offset
        if size > remaining:
            raise ProtocolError(
                f"{where}: {BINARY_DATA_SIZE} {size} exceeds the {remaining} bytes of binary data left"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def finish(self) -> None:
        extra = len(self._data) - self._offset
        if extra:
            raise ProtocolError(
                f"{extra} bytes of binary data follow the inputs' {BINARY_DATA_SIZE} total of {self._offset}"
            )


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, BinaryData]:
    """The JSON header and the binary data of a REST request body."""
    if header_length is None:
        return raw, BinaryData(b"", present=False)
    text = header_length.strip()
    if not text.isascii() or not text.isdigit():
        raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, got {quote(header_length)}")
    length = int(text)
    if length > len(raw):
        raise ProtocolError(f"{HEADER_LENGTH} {length} exceeds the {len(raw)}-byte body")
    return raw[:length], BinaryData(raw[length:], present=True)


def decode_request(
    body: Any, info: ModelInfo, max_batch_size: int, binary: BinaryData | None = None
) -> InferRequest:
    binary = binary if binary is not None else BinaryData(b"", present=False)
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    raw_inputs = body.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("inputs must be a non-empty list")
    specs = {t.name: t for t in info.inputs}
    inputs = [_decode_tensor(raw, index, specs, binary) for index, raw in enumerate(raw_inputs)]
    binary.finish()
    outputs, binary_outputs = _requested_outputs(body, info)
    return validated_request(
        request_id, inputs, info, max_batch_size, outputs=outputs, binary_outputs=binary_outputs
    )


def _decode_tensor(
    raw: Any, index: int, specs: Mapping[str, TensorSpec], binary: BinaryData
) -> tuple[str, np.ndarray]:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"{where}.name must be a string")
    spec = input_spec(name, specs)
    where = f"input {name!r}"
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ProtocolError(f"{where}: shape must be a list of integers")
    datatype = check_header(where, shape, raw.get("datatype"), spec)
    size = _parameters(where, raw).get(BINARY_DATA_SIZE)
    if size is not None:
        if "data" in raw:
            raise ProtocolError(f"{where}: has both data and parameters.{BINARY_DATA_SIZE}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(
                f"{where}: {BINARY_DATA_SIZE} must be a non-negative integer, got {quote(size)}"
            )
        return name, raw_tensor(where, datatype, shape, binary.take(where, size))
    if "data" not in raw:
        raise ProtocolError(
            f"{where}: no data (give data, or parameters.{BINARY_DATA_SIZE} with binary data)"
        )
    return name, check_count(where, shape, _to_array(where, raw["data"], datatype))


def _parameters(where: str, raw: Mapping[str, Any]) -> Mapping[str, Any]:
    parameters = raw.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where}: parameters must be an object")
    return parameters


def _flag(where: str, parameters: Mapping[str, Any], key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}parameters.{key} must be true or false, got {quote(value)}")
    return value


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
        if ok:
            check_range(where, array, datatype)
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


def _requested_outputs(
    body: Mapping[str, Any], info: ModelInfo
) -> tuple[tuple[str, ...] | None, frozenset[str]]:
    """(requested output names or None for all, the outputs to answer as binary data).

    An output's own `parameters.binary_data` decides; without it, the request's top-level
    `parameters.binary_data_output` (default false)."""
    every_binary = _flag("", _parameters("request", body), BINARY_DATA_OUTPUT, False)
    raw = body.get("outputs")
    if raw is None:
        return None, frozenset(t.name for t in info.outputs) if every_binary else frozenset()
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise ProtocolError("outputs must be a list of objects with a name")
    names = tuple(o["name"] for o in raw)
    binary = frozenset(
        o["name"]
        for index, o in enumerate(raw)
        if _flag(f"outputs[{index}].", _parameters(f"outputs[{index}]", o), BINARY_DATA, every_binary)
    )
    return names, binary


def encode_response(
    info: ModelInfo, request: InferRequest, results: Mapping[str, np.ndarray]
) -> InferResponse:
    datatypes = {t.name: t.datatype for t in info.outputs}
    names = request.outputs if request.outputs is not None else tuple(datatypes)
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for name in names:
        datatype, array = datatypes[name], results[name]
        if name in request.binary_outputs:
            contents = to_raw(datatype, array)
            binary.append(contents)
            outputs.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(array.shape),
                    "parameters": {BINARY_DATA_SIZE: len(contents)},
                }
            )
        else:
            outputs.append(_encode_tensor(name, datatype, array))
    body: dict[str, Any] = {"model_name": info.name, "model_version": info.version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    return InferResponse(body, tuple(binary))


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
