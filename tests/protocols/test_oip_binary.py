"""Triton's binary tensor extension in the OIP adapter (`server.binary_tensors: true`): the request
bytes, answers in binary, JSON or both, and every malformed answer an InvalidResponse.

Expected bytes are written out with `struct` here, not with warmgate.tensors, so the tests do not
share the code they check.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.support import server, shape
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import InvalidResponse, make_adapter, validate
from warmgate.protocols.base import INVALID, Adapter
from warmgate.protocols.oip import INFERENCE_HEADER

TIMEOUT = aiohttp.ClientTimeout(total=5)


def binary_adapter() -> Adapter:
    return make_adapter(server(binary_tensors=True))


def split(body: bytes | None, header_length: str) -> tuple[dict[str, Any], bytes]:
    """A binary body's JSON header (parsed) and the bytes after it."""
    assert body is not None
    length = int(header_length)
    return json.loads(body[:length]), body[length:]


# ---- requests --------------------------------------------------------------------------------------


def test_the_request_is_a_json_header_then_each_inputs_raw_bytes_in_order() -> None:
    the_shape = shape(
        batch=2,
        x={"datatype": "FP32", "dims": [2], "data": "literal", "value": [1.5, -2.5]},
        h={"datatype": "FP16", "dims": [1], "data": "literal", "value": 0.5},
        t={"datatype": "BYTES", "dims": [1], "data": "literal", "value": "héllo"},
        b={"datatype": "BOOL", "dims": [3], "data": "literal", "value": [True, False, True]},
        i={"datatype": "INT64", "dims": [1], "data": "literal", "value": -3},
    )
    request = binary_adapter().build(build_inputs(the_shape), the_shape.batch_size)
    assert request.method == "POST" and request.url == "http://127.0.0.1:9/v2/models/m/infer"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.batch_size == 2
    header, tail = split(request.body, request.headers[INFERENCE_HEADER])
    text = "héllo".encode()
    raw = {
        "x": struct.pack("<4f", 1.5, -2.5, 1.5, -2.5),
        "h": struct.pack("<2e", 0.5, 0.5),
        "t": (struct.pack("<I", len(text)) + text) * 2,
        "b": bytes([1, 0, 1, 1, 0, 1]),
        "i": struct.pack("<2q", -3, -3),
    }
    assert header == {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
            {"name": "h", "shape": [2, 1], "datatype": "FP16", "parameters": {"binary_data_size": 4}},
            {"name": "t", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 20}},
            {"name": "b", "shape": [2, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 6}},
            {"name": "i", "shape": [2, 1], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        ],
        "parameters": {"binary_data_output": True},
    }
    assert tail == b"".join(raw[name] for name in ("x", "h", "t", "b", "i"))
    # The header length counts bytes, not characters (no input name is ASCII-only by contract).
    assert request.size == int(request.headers[INFERENCE_HEADER]) + len(tail)


def test_an_unbatched_shape_and_a_versioned_model() -> None:
    the_shape = shape(batch=0)
    adapter = make_adapter(server(binary_tensors=True, model_version="3"))
    request = adapter.build(build_inputs(the_shape), 0)
    header, tail = split(request.body, request.headers[INFERENCE_HEADER])
    assert request.url.endswith("/v2/models/m/versions/3/infer")
    assert header["inputs"][0]["shape"] == [2] and tail == struct.pack("<2f", 1.5, 2.5)


def test_without_the_option_the_request_stays_json() -> None:
    request = make_adapter(server()).build(build_inputs(shape()), 2)
    assert request.headers["Content-Type"] == "application/json" and INFERENCE_HEADER not in request.headers
    assert request.body is not None and json.loads(request.body)["inputs"][0]["data"] == [1.5, 2.5, 1.5, 2.5]


# ---- answers ---------------------------------------------------------------------------------------


def binary_answer(
    *outputs: tuple[dict[str, Any], bytes], json_outputs: tuple[dict[str, Any], ...] = ()
) -> tuple[bytes, dict[str, str]]:
    """A binary answer: each (output JSON, raw bytes) with its size declared, then JSON outputs."""
    listed = [{**meta, "parameters": {"binary_data_size": len(raw)}} for meta, raw in outputs]
    header = json.dumps({"model_name": "m", "outputs": [*listed, *json_outputs]}).encode()
    return header + b"".join(raw for _meta, raw in outputs), {INFERENCE_HEADER: str(len(header))}


def test_binary_outputs_of_every_kind_decode_to_the_values_json_would_give() -> None:
    body, headers = binary_answer(
        ({"name": "f", "datatype": "FP32", "shape": [2, 2]}, struct.pack("<4f", 0.5, -1.0, math.inf, 3.0)),
        ({"name": "h", "datatype": "FP16", "shape": [2, 1]}, struct.pack("<2e", 0.25, -2.0)),
        ({"name": "d", "datatype": "FP64", "shape": [2]}, struct.pack("<2d", 1e300, -0.0)),
        ({"name": "i", "datatype": "INT8", "shape": [2]}, struct.pack("<2b", -128, 127)),
        ({"name": "u", "datatype": "UINT64", "shape": [2]}, struct.pack("<2Q", 0, 2**64 - 1)),
        ({"name": "b", "datatype": "BOOL", "shape": [2, 2]}, bytes([1, 0, 0, 1])),
        ({"name": "t", "datatype": "BYTES", "shape": [2]}, b"\x02\x00\x00\x00hi\x01\x00\x00\x00\xff"),
        ({"name": "bf", "datatype": "BF16", "shape": [2]}, struct.pack("<2H", 0x3FC0, 0xC000)),
    )
    outputs = binary_adapter().decode(body, 2, headers)
    assert {name: (o.shape, o.datatype, o.data) for name, o in outputs.items()} == {
        "f": ((2, 2), "FP32", [0.5, -1.0, math.inf, 3.0]),
        "h": ((2, 1), "FP16", [0.25, -2.0]),
        "d": ((2,), "FP64", [1e300, -0.0]),
        "i": ((2,), "INT8", [-128, 127]),
        "u": ((2,), "UINT64", [0, 2**64 - 1]),
        "b": ((2, 2), "BOOL", [True, False, False, True]),
        "t": ((2,), "BYTES", ["hi", "\\xff"]),
        "bf": ((2,), "BF16", [1.5, -2.0]),
    }
    # Plain Python values, as decoded JSON holds, so answers compare the same way (BYTES as text,
    # bytes that are not UTF-8 as backslash escapes, as the gRPC adapter gives them).
    assert [type(v) for v in outputs["f"].data + outputs["i"].data + outputs["b"].data] == (
        [float] * 4 + [int] * 2 + [bool] * 4
    )


def test_a_plain_json_answer_to_a_binary_request_decodes() -> None:
    # The extension lets a server answer in JSON anyway; there is then no header to read.
    answer = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 1], "data": [1.0, 2.0]}]}'
    assert binary_adapter().decode(answer, 2)["y"].data == [1.0, 2.0]
    # ... and a JSON answer that carries the header (nothing after the JSON) is the same answer.
    headers = {INFERENCE_HEADER: str(len(answer))}
    assert binary_adapter().decode(answer, 2, headers)["y"].data == [1.0, 2.0]


def test_a_mixed_answer_takes_binary_and_json_outputs_in_order() -> None:
    body, headers = binary_answer(
        ({"name": "first", "datatype": "INT32", "shape": [2]}, struct.pack("<2i", 7, 8)),
        ({"name": "second", "datatype": "FP32", "shape": [2, 1]}, struct.pack("<2f", 0.5, 1.5)),
        json_outputs=({"name": "label", "datatype": "BYTES", "shape": [2], "data": ["cat", "dog"]},),
    )
    outputs = binary_adapter().decode(body, 2, headers)
    assert outputs["first"].data == [7, 8] and outputs["second"].data == [0.5, 1.5]
    assert outputs["label"].data == ["cat", "dog"] and outputs["label"].shape == (2,)


def test_the_batch_rule_applies_to_binary_outputs() -> None:
    body, headers = binary_answer(
        ({"name": "y", "datatype": "FP32", "shape": [1, 2]}, struct.pack("<2f", 1, 2))
    )
    assert binary_adapter().decode(body, 1, headers)["y"].shape == (1, 2)
    with pytest.raises(
        InvalidResponse, match=r"^output y: shape \[1, 2\] does not lead with the batch size 4"
    ):
        binary_adapter().decode(body, 4, headers)


FP32_2 = {"name": "y", "datatype": "FP32", "shape": [2]}
GOOD, GOOD_HEADERS = binary_answer((FP32_2, struct.pack("<2f", 1, 2)))
GOOD_LENGTH = int(GOOD_HEADERS[INFERENCE_HEADER])


def framed(outputs: list[dict[str, Any]], tail: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"outputs": outputs}).encode()
    return header + tail, {INFERENCE_HEADER: str(len(header))}


def with_size(size: Any, **meta: Any) -> dict[str, Any]:
    return {**FP32_2, **meta, "parameters": {"binary_data_size": size}}


MALFORMED: dict[str, tuple[bytes, Mapping[str, str], str]] = {
    "header is a word": (
        GOOD,
        {INFERENCE_HEADER: "lots"},
        f"^{INFERENCE_HEADER} 'lots' is not a byte count$",
    ),
    "header is negative": (GOOD, {INFERENCE_HEADER: "-5"}, "is not a byte count"),
    "header is empty": (GOOD, {INFERENCE_HEADER: ""}, "is not a byte count"),
    "header has unicode digits": (GOOD, {INFERENCE_HEADER: "²"}, "is not a byte count"),
    "header has 400 digits": (
        GOOD,
        {INFERENCE_HEADER: "9" * 400},
        r"^Inference-Header-Content-Length '9{30,}\.\.\. is not a byte count$",
    ),
    "header beyond the body": (
        GOOD,
        {INFERENCE_HEADER: str(len(GOOD) + 1)},
        f"^{INFERENCE_HEADER} {len(GOOD) + 1:,} is beyond the {len(GOOD):,}-byte body$",
    ),
    "header of zero": (GOOD, {INFERENCE_HEADER: "0"}, "^response is not JSON"),
    "header cuts the JSON": (GOOD, {INFERENCE_HEADER: str(GOOD_LENGTH - 1)}, "^response is not JSON"),
    "header takes binary bytes": (GOOD, {INFERENCE_HEADER: str(GOOD_LENGTH + 1)}, "^response is not"),
    "size beyond the data": (
        *framed([with_size(12)], b"\x00" * 8),
        "^output y: binary_data_size 12 is more than the 8 bytes of binary data left$",
    ),
    "second size beyond what is left": (
        *framed([with_size(8), with_size(8, name="z")], b"\x00" * 12),
        "^output z: binary_data_size 8 is more than the 4 bytes of binary data left$",
    ),
    "bytes left over": (
        *framed([with_size(8)], b"\x00" * 9),
        "^the outputs' binary_data_size add up to 8 bytes, the answer carries 9 after its JSON header$",
    ),
    "size negative": (*framed([with_size(-8)], b""), r"^output y: binary_data_size -8 is not a byte count$"),
    "size a string": (*framed([with_size("8")], b"\x00" * 8), r"binary_data_size '8' is not a byte count"),
    "size a boolean": (*framed([with_size(True)], b"\x00"), "binary_data_size true is not a byte count"),
    "size a float": (*framed([with_size(8.0)], b"\x00" * 8), "binary_data_size 8.0 is not a byte count"),
    "size huge": (*framed([with_size(10**30)], b""), "binary_data_size 1,000,0"),
    "no datatype": (
        *framed([with_size(8, datatype=None)], b"\x00" * 8),
        "^output y: binary data needs a datatype and a shape",
    ),
    "no shape": (
        *framed([{"name": "y", "datatype": "FP32", "parameters": {"binary_data_size": 8}}], b"\x00" * 8),
        "needs a datatype and a shape",
    ),
    "unknown datatype": (
        *framed([with_size(8, datatype="FP8")], b"\x00" * 8),
        "^output y: datatype 'FP8' is not an Open Inference Protocol datatype$",
    ),
    "shape of strings": (*framed([with_size(8, shape=["2"])], b"\x00" * 8), "^output y: shape"),
    "shape negative": (*framed([with_size(8, shape=[-2])], b"\x00" * 8), "element 0 is negative"),
    "raw size does not fit the shape": (
        *framed([with_size(4)], b"\x00" * 4),
        r"^output y: 4 raw bytes cannot be a FP32 tensor of shape \[2\] \(8 bytes\)$",
    ),
    "huge shape, tiny data": (
        *framed([with_size(8, shape=[2**40, 2**20])], b"\x00" * 8),
        "8 raw bytes cannot be a FP32 tensor",
    ),
    "BYTES element longer than the data": (
        *framed([with_size(8, datatype="BYTES")], b"\xff\x00\x00\x00abcd"),
        "^output y: BYTES element 0 claims 255 bytes; 4 remain$",
    ),
    "BYTES with too few elements": (
        *framed([with_size(6, datatype="BYTES")], b"\x02\x00\x00\x00ab"),
        "BYTES contents hold 1 elements, the shape needs 2",
    ),
    "BYTES ends inside a length": (
        *framed([with_size(6, datatype="BYTES")], b"\x00\x00\x00\x00ab"),
        "end inside an element length",
    ),
    "BOOL byte that is not 0 or 1": (
        *framed([with_size(2, datatype="BOOL")], b"\x01\x02"),
        "^output y: BOOL contents hold a byte other than 0 or 1$",
    ),
    "BF16 of the wrong size": (
        *framed([with_size(3, datatype="BF16")], b"\x00" * 3),
        "cannot be a BF16 tensor",
    ),
    "binary size without the header": (
        json.dumps({"outputs": [with_size(8)]}).encode(),
        {},
        f"^output y has binary_data_size but the answer has no {INFERENCE_HEADER} header",
    ),
    "binary body without the header": (GOOD, {}, r"^response is not (JSON|UTF-8)"),
    "no outputs": (*framed([], b""), "^response has no outputs$"),
    "an error": (
        b'{"error": "model failed"}',
        {INFERENCE_HEADER: "25"},
        "^response carries an error: model failed$",
    ),
    "name not a string": (*framed([with_size(8, name=5)], b"\x00" * 8), "^output 0: name 5 is not a string$"),
}


@pytest.mark.parametrize(("body", "headers", "message"), MALFORMED.values(), ids=list(MALFORMED))
def test_every_malformed_answer_is_an_invalid_response(
    body: bytes, headers: Mapping[str, str], message: str
) -> None:
    with pytest.raises(InvalidResponse, match=message) as raised:
        binary_adapter().decode(body, 2, headers)
    assert str(raised.value).isprintable() and len(str(raised.value)) <= 240


def test_the_good_answer_the_table_breaks_is_good() -> None:
    assert binary_adapter().decode(GOOD, 2, GOOD_HEADERS)["y"].data == [1.0, 2.0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tail=st.binary(max_size=64),
    header_text=st.one_of(st.integers(-5, 400).map(str), st.text(max_size=8)),
    size=st.one_of(st.integers(-3, 70), st.text(max_size=3), st.none(), st.floats()),
    datatype=st.sampled_from(["FP32", "FP16", "BF16", "BOOL", "BYTES", "INT64", "UINT8", "X"]),
    dims=st.lists(st.integers(-1, 9), max_size=3),
)
def test_no_binary_answer_raises_anything_but_invalid_response(
    tail: bytes, header_text: str, size: Any, datatype: str, dims: list[int]
) -> None:
    output = {"name": "y", "datatype": datatype, "shape": dims, "parameters": {"binary_data_size": size}}
    body = json.dumps({"outputs": [output]}).encode() + tail
    for headers in ({INFERENCE_HEADER: header_text}, {INFERENCE_HEADER: str(len(body) - len(tail))}):
        try:
            # The decoder itself, not `decode`, whose safety net would hide what it missed.
            binary_adapter().parse_answer(body, headers)
        except InvalidResponse as exc:
            assert str(exc).isprintable()


# ---- over a real loopback connection: the header reaches the decoder -----------------------------


@pytest.fixture
async def base_url(aiohttp_server: Any) -> str:
    async def binary(request: web.Request) -> web.Response:
        header, tail = split(await request.read(), request.headers[INFERENCE_HEADER])
        assert request.headers["Content-Type"] == "application/octet-stream"
        values = struct.unpack(f"<{len(tail) // 4}f", tail)
        body, headers = binary_answer(
            (
                {"name": "y", "datatype": "FP32", "shape": header["inputs"][0]["shape"]},
                struct.pack(f"<{len(values)}f", *(2 * v for v in values)),
            )
        )
        return web.Response(body=body, headers=headers, content_type="application/octet-stream")

    async def garbled(_request: web.Request) -> web.Response:
        # Sizes that do not add up, and bytes after the header that would break a one-line reason.
        body, headers = framed([with_size(8, shape=[2, 1])], b"\x00" * 8 + b"\r\n\x1b[31m")
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_post("/v2/models/m/infer", binary)
    app.router.add_post("/v2/models/garbled/infer", garbled)
    test_server = await aiohttp_server(app)
    return str(test_server.make_url("")).rstrip("/")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_a_binary_round_trip_over_http(session: aiohttp.ClientSession, base_url: str) -> None:
    adapter = make_adapter(server(url=base_url, binary_tensors=True))
    request = adapter.build(build_inputs(shape()), 2)
    result = await adapter.send(session, request, TIMEOUT)
    assert result.ok and set(result.headers) == {INFERENCE_HEADER}
    checked, outputs = validate(adapter, result)
    assert checked is result and outputs is not None
    assert outputs["y"].data == [3.0, 5.0, 3.0, 5.0] and outputs["y"].shape == (2, 2)


async def test_a_malformed_binary_answer_fails_with_its_json_header_as_the_excerpt(
    session: aiohttp.ClientSession, base_url: str
) -> None:
    adapter = make_adapter(server(url=base_url, model="garbled", binary_tensors=True))
    result = await adapter.send(session, adapter.build(build_inputs(shape()), 2), TIMEOUT)
    failed, outputs = validate(adapter, result)
    assert outputs is None and failed.kind == INVALID
    assert failed.message == (
        "the outputs' binary_data_size add up to 8 bytes, the answer carries 15 after its JSON header: "
        '{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 1], '
        '"parameters": {"binary_data_size": 8}}]} '
        "(+15 bytes of binary data)"
    )


def test_describe_answer_with_an_unusable_header_names_it_without_the_body() -> None:
    adapter = binary_adapter()
    assert (
        adapter.describe_answer(b"\x1b[2J\r\n", {INFERENCE_HEADER: "x"})
        == f"(6 bytes, {INFERENCE_HEADER} 'x')"
    )
    assert adapter.describe_answer(b'{"a": 1}', {}) == '{"a": 1}'
