"""Server answers are untrusted input: reading them with a size cap, and decoding them.

Whatever a model server sends (a body of gigabytes, JSON nested 100,000 levels deep, a `shape`
of strings, NaN where a dimension belongs, bytes that are not UTF-8) ends here as
`InvalidResponse` with a one-line reason, which the caller counts as a failed request. Nothing
here raises anything else for any input, so no answer can end `warmgate run` with a traceback.

The order keeps every step bounded: the body is read up to `MAX_ANSWER_BYTES`; `json.loads`
(whose C parser raises RecursionError near 1,000 levels) is followed by an iterative depth check,
so the recursive walkers after it (`flatten`, `json_outputs`) never go deeper than
`MAX_JSON_DEPTH`; shapes are checked element by element before any product is taken.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Annotations only: the probe decodes health answers with this module and loads no aiohttp.
    import aiohttp

# The most bytes read from one server answer. An inference answer in JSON is about 10 bytes per
# float: 64 MiB holds a 6-million-element output (a 512x512x21 segmentation map is 5.5 million),
# and warmup holds at most `warmup_concurrency` answers at once. The request side has the same
# default budget (`warmup.max_payload_bytes`).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# Model metadata and health bodies are a few kilobytes; a megabyte of them is already wrong.
MAX_METADATA_BYTES = 8 * 1024 * 1024
# JSON nesting allowed in an answer. A rank-8 tensor nested in OIP's outputs list is about 12
# levels; a custom server's answer rarely passes 20. Well under Python's recursion limit (1,000),
# so the recursive walkers below cannot hit it from any caller's stack depth.
MAX_JSON_DEPTH = 100
# Largest rank and dimension accepted in a declared output shape (ONNX and Triton allow far fewer
# dimensions; a dimension over int64 cannot be a real tensor).
MAX_RANK = 64
MAX_DIMENSION = 2**63 - 1
# Characters of a bad value quoted in a reason, and of a server's own error message.
SHOWN_CHARS = 40
ERROR_CHARS = 120
# Characters of an output name (names end up in reasons, the report and the log).
NAME_CHARS = 200

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
# Inclusive value ranges of the integer datatypes.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}
DATATYPES = frozenset({"BOOL", "BYTES", *FLOAT_DATATYPES, *INTEGER_RANGES})


class InvalidResponse(Exception):
    """A 2xx response that is not an inference answer (no outputs, an error field, not JSON,
    malformed outputs, too large)."""


class NotJson(InvalidResponse):
    """The body is not JSON at all (or not UTF-8), as opposed to JSON that is malformed."""


@dataclass(frozen=True)
class OutputTensor:
    """One output, flattened row-major. `datatype` is None when the protocol does not say."""

    name: str
    data: list[Any]
    shape: tuple[int, ...] | None = None
    datatype: str | None = None


Outputs = dict[str, OutputTensor]


# ---- reading -----------------------------------------------------------------------------------


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, read chunk by chunk and abandoned as soon as it passes `limit` bytes (a declared
    Content-Length over the limit is refused before anything is read). Abandoning a body closes
    the connection instead of returning it to the pool."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise over_cap(limit, declared)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise over_cap(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def excerpt(body: bytes, limit: int = 120) -> str:
    """The start of an answer body as one line, for a failure's reason."""
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def over_cap(limit: int, declared: int | None = None) -> InvalidResponse:
    """The failure of an answer larger than `limit` bytes (declared so, or found so reading)."""
    cap = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit:,}-byte"
    if declared is not None:
        return InvalidResponse(f"answer of {declared:,} bytes is over the {cap} cap on an answer")
    return InvalidResponse(f"answer is over the {cap} cap on an answer (stopped reading)")


# ---- JSON --------------------------------------------------------------------------------------


def loads_object(body: bytes) -> Any:
    """Any JSON document, no deeper than MAX_JSON_DEPTH."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise InvalidResponse(f"response nests deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise NotJson("response is not UTF-8 text") from None
    except ValueError as exc:
        # JSONDecodeError says where; the 4,300-digit integer limit says why.
        raise NotJson(f"response is not JSON ({_first_line(exc)})") from None
    check_depth(document)
    return document


def loads_result(body: bytes) -> dict[str, Any]:
    """An inference response that must be a JSON object without an `error` (OIP, TF Serving)."""
    document = loads_object(body)
    if not isinstance(document, dict):
        raise InvalidResponse(f"response is a JSON {json_type(document)}, not an object")
    if document.get("error"):
        error = document["error"]
        text = error if isinstance(error, str) else show(error, ERROR_CHARS)
        raise InvalidResponse(f"response carries an error: {cut(text, ERROR_CHARS)}")
    return document


def check_depth(document: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise InvalidResponse when containers nest deeper than `limit` (breadth first, no
    recursion). A flat list of numbers costs one C-level pass over its element types."""
    level = [document]
    depth = 0
    while level:
        containers: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
            if not children:
                continue
            kinds = set(map(type, children))
            if list in kinds or dict in kinds:
                containers.extend(child for child in children if isinstance(child, (list, dict)))
        depth += 1
        if containers and depth >= limit:
            raise InvalidResponse(f"response nests deeper than {limit} levels")
        level = containers


def flatten(value: Any) -> tuple[list[Any], tuple[int, ...] | None]:
    """Nested lists -> (flat values, shape); the shape is None when the nesting is ragged.
    Recursive, so only for documents from `loads_object` (depth-checked)."""
    if not isinstance(value, list):
        return [value], ()
    shape: list[int] = []
    probe: Any = value
    while isinstance(probe, list):
        shape.append(len(probe))
        probe = probe[0] if probe else None
    flat: list[Any] = []
    regular = _flatten_into(value, 0, shape, flat)
    return flat, (tuple(shape) if regular else None)


def _flatten_into(value: Any, depth: int, shape: list[int], out: list[Any]) -> bool:
    if not isinstance(value, list):
        out.append(value)
        return depth == len(shape)
    regular = depth < len(shape) and len(value) == shape[depth]
    if depth == len(shape) - 1 and regular and list not in set(map(type, value)):
        out.extend(value)  # the innermost level, in one C-level step
        return True
    for item in value:
        regular = _flatten_into(item, depth + 1, shape, out) and regular
    return regular


def json_outputs(document: Any, prefix: str = "") -> Outputs:
    """Every leaf array of a JSON document as an output named by its dotted path.
    Recursive, so only for documents from `loads_object` (depth-checked)."""
    outputs: Outputs = {}
    if isinstance(document, dict):
        for key, value in document.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            outputs.update(json_outputs(value, name))
        return outputs
    if isinstance(document, list) and document and all(isinstance(item, dict) for item in document):
        for index, item in enumerate(document):
            outputs.update(json_outputs(item, f"{prefix}.{index}" if prefix else str(index)))
        return outputs
    data, shape = flatten(document)
    name = output_name(prefix or "output")
    outputs[name] = OutputTensor(name=name, data=data, shape=shape)
    return outputs


def output_name(text: str) -> str:
    """A server-chosen name made safe to print: one line, control characters escaped, cut."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 3] + "..."


# ---- typed tensors (declared shape and datatype, as OIP answers carry them) --------------------


def declared_shape(value: Any, where: str) -> tuple[int, ...]:
    """A declared `shape`: a list of at most MAX_RANK integers in 0..MAX_DIMENSION."""
    problem = _shape_problem(value)
    if problem:
        raise InvalidResponse(
            f"{where}: shape {show(value)} is not a list of non-negative integers ({problem})"
        )
    return tuple(value)


def _shape_problem(value: Any) -> str:
    if not isinstance(value, list):
        return f"it is a JSON {json_type(value)}"
    if len(value) > MAX_RANK:
        return f"{len(value)} dimensions, more than {MAX_RANK}"
    for index, dim in enumerate(value):
        if type(dim) is not int:  # bool is an int subclass: excluded too
            return f"element {index} is a JSON {json_type(dim)}"
        if dim < 0:
            return f"element {index} is negative"
        if dim > MAX_DIMENSION:
            return f"element {index} is over 2**63-1"
    return ""


def check_count(shape: tuple[int, ...], data: list[Any], where: str) -> None:
    expected = math.prod(shape)
    if expected != len(data):
        raise InvalidResponse(
            f"{where}: shape {list(shape)} holds {expected:,} values, data has {len(data):,}"
        )


def check_datatype(datatype: Any, where: str) -> str:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidResponse(
            f"{where}: datatype {show(datatype)} is not an Open Inference Protocol datatype"
        )
    return datatype


def check_values(datatype: str | None, data: list[Any], where: str) -> None:
    """Every element fits the datatype: numbers for FP (NaN and infinities included: JSON writers
    in Python emit them for float outputs), integers in range for INT/UINT, booleans (or 0/1) for
    BOOL, strings for BYTES; without a datatype, JSON scalars only."""
    kinds = set(map(type, data))
    if datatype is None:
        wrong = kinds & {list, dict}
    elif datatype in FLOAT_DATATYPES:
        wrong = kinds - {int, float}
        if not wrong and int in kinds:
            ints = [v for v in data if type(v) is int]
            _check_range(ints, -sys.float_info.max, sys.float_info.max, datatype, where)
    elif datatype in INTEGER_RANGES:
        wrong = kinds - {int}
        if not wrong and data:
            _check_range(data, *INTEGER_RANGES[datatype], datatype, where)
    elif datatype == "BOOL":
        wrong = kinds - {bool, int}
        if not wrong and int in kinds:
            _check_range([v for v in data if type(v) is int], 0, 1, datatype, where)
    else:  # BYTES
        wrong = kinds - {str}
    if wrong:
        kind = min(wrong, key=lambda k: k.__name__)
        example = next(v for v in data if type(v) is kind)
        what = f"datatype {datatype} but data holds" if datatype else "data holds"
        raise InvalidResponse(f"{where}: {what} a JSON {json_type(example)} ({show(example)})")


def _check_range(values: list[Any], low: float, high: float, datatype: str, where: str) -> None:
    smallest, largest = min(values), max(values)
    bad = smallest if smallest < low else largest if largest > high else None
    if bad is not None:
        raise InvalidResponse(f"{where}: value {show(bad)} is out of range for {datatype}")


def raw_values(datatype: str, shape: tuple[int, ...], raw: bytes, where: str) -> list[Any]:
    """The flat values of a tensor's raw contents (HTTP binary data, gRPC raw_output_contents)
    as a JSON answer would carry them, so answers compare alike whichever way they came: numbers
    and booleans as Python values, BF16 widened to float, BYTES elements as text (bytes that are
    not UTF-8 stay distinguishable as backslash escapes). InvalidResponse when the bytes cannot
    be a tensor of `shape` and `datatype` (a checked `declared_shape` and `check_datatype`)."""
    import numpy as np  # not at import time: the protocol registry loads this module

    from warmgate.tensors import RawContentsError, element_count, from_raw

    if datatype == "BOOL" and raw.translate(None, b"\x00\x01"):
        raise InvalidResponse(f"{where}: BOOL contents hold a byte other than 0 or 1")
    if datatype == "BF16":
        # No numpy dtype: the upper half of an FP32, so widen each 2-byte value by 16 bits.
        count = element_count(shape)
        if len(raw) != 2 * count:
            raise InvalidResponse(
                f"{where}: {len(raw)} raw bytes cannot be a BF16 tensor of shape {list(shape)} "
                f"({2 * count} bytes)"
            )
        widened = np.frombuffer(raw, dtype="<u2").astype("<u4") << 16
        return widened.view("<f4").tolist()
    try:
        values = from_raw(datatype, shape, raw).reshape(-1).tolist()
    except RawContentsError as exc:
        raise InvalidResponse(f"{where}: {cut(str(exc), ERROR_CHARS)}") from None
    if datatype == "BYTES":
        return [item.decode("utf-8", "backslashreplace") for item in values]
    return values


def check_batch(outputs: Outputs, batch_size: int) -> None:
    """Every shaped output leads with the request's batch size: an answer for another batch
    means the server did not run the shape that was sent (so it was not warmed either)."""
    for output in outputs.values():
        shape = output.shape
        if shape is None:
            continue  # ragged nesting: no shape to compare
        if not shape or shape[0] != batch_size:
            raise InvalidResponse(
                f"output {output.name}: shape {list(shape)} does not lead with the batch size "
                f"{batch_size}: the server did not answer the shape that was sent"
            )


# ---- wording -----------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def show(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A short, one-line rendering of any decoded value (depth-checked, so repr cannot recurse
    too far; a huge integer is described rather than printed)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    try:
        text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return cut(text, limit)


def cut(text: str, limit: int) -> str:
    """One line of at most `limit` characters."""
    text = " ".join(text.split()) if "\n" in text or "\r" in text else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."
