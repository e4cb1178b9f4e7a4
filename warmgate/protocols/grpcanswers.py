"""Answers of the Open Inference Protocol's gRPC service, decoded as untrusted input, and gRPC
errors worded in one line. Used by oipgrpc.py; protobuf, grpc and numpy are imported inside the
functions (the registry imports this module on every config load).

A `ModelInferResponse` carries each output's data either in `raw_output_contents` (one entry per
output, in order: what Triton and KServe send for raw requests) or in the output's typed
`contents` (`fp32_contents`, `int_contents`, ...). Either way the output is checked like a REST
answer: a known datatype, a declared shape of at most 64 non-negative dimensions whose product is
the number of values, values that fit the datatype. Nothing here raises anything but
`InvalidResponse` for any bytes.
"""

from __future__ import annotations

import re
from typing import Any

from warmgate.protocols.answers import (
    ERROR_CHARS,
    InvalidResponse,
    Outputs,
    OutputTensor,
    check_count,
    check_datatype,
    check_values,
    declared_shape,
    output_name,
    raw_values,
)

# Which typed `contents` field carries each datatype (FP16 and BF16 have none: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# Characters of a server's error details in a reason.
DETAIL_CHARS = 2 * ERROR_CHARS
# grpc's wording for a connection that failed: the address part says nothing the URL does not.
_CONNECT_PREFIX = re.compile(
    r"^failed to connect to all addresses; last error: (?:[A-Z_]+: )?(?:(?:ipv4|ipv6|unix):\S+: )?"
)
# Known failures to connect, in the words of the user's config.
_HINTS: tuple[tuple[str, bool | None, str], ...] = (
    # (text in the details, only when the URL is grpcs:// (True) / grpc:// (False) / either, hint)
    (
        "Trying to connect an http1.x server",
        None,
        "the port answers HTTP/1.1, not gRPC: is server.url the gRPC port?",
    ),
    ("WRONG_VERSION_NUMBER", True, "the port does not speak TLS: use grpc://"),
    (
        "CERTIFICATE_VERIFY_FAILED",
        True,
        "the server's TLS certificate is not trusted by the default root certificates "
        "(GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names another bundle)",
    ),
    ("Socket closed", False, "the port closed the connection: if it expects TLS, use grpcs://"),
)


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    """Server- or library-supplied text as one printable line of at most `limit` characters."""
    text = " ".join(text.split())
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_rpc_error(error: BaseException, *, secure: bool) -> str:
    """`CODE: details` (with a hint first where the failure is a known mistake), one line."""
    import grpc

    if not isinstance(error, grpc.aio.AioRpcError):
        return one_line(f"{type(error).__name__}: {error}")
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    details = error.details() or ""
    said = one_line(_CONNECT_PREFIX.sub("", details)) or "(no details)"
    if not _CONNECT_PREFIX.match(details):
        return f"{name}: {said}"  # not while connecting (a connection that broke mid-call): no hint
    for text, when_secure, hint in _HINTS:
        if text in details and when_secure in (None, secure):
            return f"{name}: {hint} ({said})"
    return f"{name}: {said}"


def parse_infer_response(body: bytes) -> Outputs:
    """The outputs of a serialised `ModelInferResponse`; InvalidResponse when there are none or
    they are malformed."""
    from google.protobuf.message import DecodeError

    from warmgate.grpcapi import open_inference_grpc_pb2 as pb

    try:
        response = pb.ModelInferResponse.FromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise InvalidResponse(f"answer is not a ModelInferResponse ({one_line(str(exc), 80)})") from None
    if not response.outputs:
        raise InvalidResponse("response has no outputs")
    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise InvalidResponse(
            f"response has {len(response.outputs)} outputs but {len(raw)} raw_output_contents"
        )
    outputs: Outputs = {}
    for index, output in enumerate(response.outputs):
        tensor = _output(index, output, raw[index] if raw else None)
        outputs[tensor.name] = tensor
    return outputs


def _output(index: int, output: Any, raw: bytes | None) -> OutputTensor:
    name = output_name(output.name or str(index))
    where = f"output {name}"
    datatype = check_datatype(output.datatype, where)
    shape = declared_shape(list(output.shape), where)
    if raw is not None:
        data = raw_values(datatype, shape, raw, where)
    else:
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidResponse(
                f"{where}: datatype {datatype} comes only as raw_output_contents, none sent"
            )
        data = list(getattr(output.contents, field))
        if datatype == "BYTES":
            data = [_text(item) for item in data]
    check_count(shape, data, where)
    check_values(datatype, data, where)
    return OutputTensor(name=name, data=data, shape=shape, datatype=datatype)


def _text(item: bytes) -> str:
    # As the REST answer would carry it: text; bytes that are not UTF-8 stay distinguishable.
    return item.decode("utf-8", "backslashreplace")
