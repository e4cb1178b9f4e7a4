"""Server answers are untrusted: every malformed answer is an InvalidResponse with a short reason.

Each case here made a decoder raise something else before (ValueError, TypeError,
RecursionError, AttributeError in the comparison), accepted a malformed answer as a real one, or
read a body of any size into memory.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.support import app_with, server
from warmgate.config import AutoShapes, ServerConfig
from warmgate.entrypoint.engine.consistency import compare_outputs
from warmgate.protocols import (
    InvalidResponse,
    MetadataError,
    OutputTensor,
    PreparedRequest,
    make_adapter,
    send,
    validate,
)
from warmgate.protocols.answers import MAX_JSON_DEPTH, check_depth, loads_object, read_capped
from warmgate.protocols.base import INVALID, Adapter, Outputs, Result
from warmgate.protocols.health import check_endpoints
from warmgate.protocols.readiness import Endpoint, model_available

PROTOCOLS = ("oip", "tfserving", "torchserve", "http")
DEEP = b"[" * 100_000 + b"]" * 100_000


def adapter(protocol: str) -> Adapter:
    extra: dict[str, Any] = {}
    if protocol == "http":
        extra = {"health_path": "/", "http": {"path": "/", "output_fields": ["y"]}}
    return make_adapter(server(protocol, **extra))


def oip_answer(**output: Any) -> bytes:
    fields = {"name": "y", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **output}
    return json.dumps({"model_name": "m", "outputs": [fields]}).encode()


# ---- OIP outputs: shape, data, datatype -----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"[1, 2]", "response is a JSON array, not an object"),
        (b'"outputs"', "response is a JSON string, not an object"),
        (oip_answer(shape=["a", "b"]), r'shape \["a", "b"\] is not a list of non-negative integers '
         r"\(element 0 is a JSON string\)"),
        (oip_answer(shape=[2.0]), r"element 0 is a JSON number"),
        (oip_answer(shape=[-2]), r"shape \[-2\] .* \(element 0 is negative\)"),
        (oip_answer(shape=[True, True]), r"element 0 is a JSON boolean"),
        (oip_answer(shape=[[2]]), r"element 0 is a JSON array"),
        (oip_answer(shape="2"), r"it is a JSON string"),
        (oip_answer(shape=[2**70]), r"element 0 is over 2\*\*63-1"),
        (oip_answer(shape=[1] * 65), r"65 dimensions, more than 64"),
        (oip_answer(shape=[3]), r"output y: shape \[3\] holds 3 values, data has 2"),
        (oip_answer(shape=[10**18, 10**18]), r"holds 1,000,000,000,000,(000,){7}000 values, data has 2"),
        (oip_answer(datatype=5), r"datatype 5 is not an Open Inference Protocol datatype"),
        (oip_answer(datatype="FLOAT"), r"datatype 'FLOAT' is not an Open Inference Protocol datatype"),
        (oip_answer(datatype="INT64", data=["a", "b"]), r"datatype INT64 but data holds a JSON string"),
        (oip_answer(datatype="INT64", data=[1.5, 2]), r"datatype INT64 but data holds a JSON number \(1.5\)"),
        (oip_answer(datatype="UINT8", data=[1, 300]), r"value 300 is out of range for UINT8"),
        (oip_answer(datatype="INT8", data=[-129, 1]), r"value -129 is out of range for INT8"),
        (oip_answer(datatype="FP32", data=[True, 1.0]), r"datatype FP32 but data holds a JSON boolean"),
        (oip_answer(datatype="FP32", data=[10**400, 1.0]), r"value an integer of 401 digits is out of range"),
        (oip_answer(datatype="BYTES", data=[1, 2]), r"datatype BYTES but data holds a JSON integer"),
        (oip_answer(datatype="BOOL", data=[2, 1]), r"value 2 is out of range for BOOL"),
        (oip_answer(datatype=None, data=[{"a": 1}, 2]), r"output y: data holds a JSON object"),
        (oip_answer(data=[[1.0, 2.0], [3.0]], shape=None), r"data is ragged"),
        (oip_answer(data=5), r"output y: data is a JSON integer, not an array"),
        (oip_answer(name=["y"]), r'output 0: name \["y"\] is not a string'),
        (b'{"outputs": [{"name": "y", "shape": [NaN], "data": [1.0]}]}', r"element 0 is a JSON non-finite"),
        (b'{"outputs": [{"name": "y", "datatype": "INT64", "shape": [1], "data": [NaN]}]}',
         r"datatype INT64 but data holds a JSON non-finite number \(NaN\)"),
        (b'{"outputs": [{"name": "y", "shape": [1], "data": [1' + b"0" * 5000 + b"]}]}",
         r"response is not JSON \(Exceeds the limit \(4300 digits\)"),
        (b'{"outputs": [{"name": "\xff\xfe", "data": [1]}]}', r"response is not UTF-8 text"),
        (DEEP, r"response nests deeper than 100 levels"),
        (b'{"outputs": [{"name": "y", "data": ' + b"[" * 99 + b"1" + b"]" * 99 + b"}]}",
         r"response nests deeper than 100 levels"),
        (b'{"error": ' + b"[" * 500 + b"]" * 500 + b"}", r"response nests deeper than 100 levels"),
        (json.dumps({"error": {"why": "x" * 1000}}).encode(), r'carries an error: \{"why": "xxx.*\.\.\.$'),
    ],
)  # fmt: skip
def test_malformed_oip_answers_are_invalid_with_a_short_reason(answer: bytes, reason: str) -> None:
    with pytest.raises(InvalidResponse, match=reason) as caught:
        adapter("oip").parse(answer)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200, message


@pytest.mark.parametrize(
    ("output", "shape"),
    [
        ({"datatype": "FP32", "shape": [2, 2], "data": [1.0, 2, 3.5, -4]}, (2, 2)),
        ({"datatype": "FP32", "shape": [2, 2], "data": [[1.0, 2.0], [3.0, 4.0]]}, (2, 2)),
        ({"datatype": "INT64", "shape": [2], "data": [-(2**63), 2**63 - 1]}, (2,)),
        ({"datatype": "UINT64", "shape": [1], "data": [2**64 - 1]}, (1,)),
        ({"datatype": "BOOL", "shape": [3], "data": [True, False, 1]}, (3,)),
        ({"datatype": "BYTES", "shape": [1], "data": ["café"]}, (1,)),
        ({"datatype": "FP32", "shape": [0, 4], "data": []}, (0, 4)),
        ({"datatype": "BF16", "shape": [1], "data": [0.5]}, (1,)),
        ({"data": [[1, 2, 3]]}, (1, 3)),  # no shape, no datatype: the nesting says
    ],
)
def test_well_formed_oip_answers_still_decode(output: dict[str, Any], shape: tuple[int, ...]) -> None:
    answer = json.dumps({"outputs": [{"name": "y", **output}]}).encode()
    assert adapter("oip").parse(answer)["y"].shape == shape


def test_nan_and_infinity_are_float_values_but_not_dimensions_or_integers() -> None:
    # Python JSON writers emit NaN/Infinity for float outputs: a value, compared NaN-to-NaN.
    floats = (
        b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [3], "data": [NaN, Infinity, -Infinity]}]}'
    )
    outputs = adapter("oip").parse(floats)
    assert compare_outputs(outputs, adapter("oip").parse(floats), rtol=0, atol=0).matched
    with pytest.raises(InvalidResponse, match="shape"):
        adapter("oip").parse(b'{"outputs": [{"name": "y", "shape": [Infinity], "data": [1.0]}]}')


# ---- every protocol: depth, encoding, non-objects ------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_response_nested_100000_levels_deep_is_invalid_in_every_protocol(protocol: str) -> None:
    for body in (DEEP, b'{"y": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        with pytest.raises(InvalidResponse, match="nests deeper than 100 levels"):
            adapter(protocol).decode(body, batch_size=1)


@pytest.mark.parametrize("protocol", ["oip", "tfserving", "http"])
def test_bytes_that_are_not_utf8_are_invalid(protocol: str) -> None:
    with pytest.raises(InvalidResponse, match="not UTF-8 text"):
        adapter(protocol).parse(b'{"y": "\xff\xfe\xfa"}')


def test_output_names_chosen_by_the_server_print_on_one_line() -> None:
    # Found by the property below: a JSON key with a newline made a two-line reason.
    with pytest.raises(
        InvalidResponse, match=r"^output a\\nb: shape \[1\] does not lead with the batch size 2"
    ):
        adapter("oip").decode(oip_answer(name="a\nb", shape=[1], data=[1.0]), batch_size=2)
    outputs = adapter("tfserving").parse(json.dumps({"outputs": {"x\r\n" + "y" * 500: [1]}}).encode())
    (name,) = outputs
    assert name.startswith("x\\r\\nyyy") and name.endswith("...") and len(name) == 200


def test_torchserve_keeps_a_non_json_body_as_one_opaque_output() -> None:
    outputs = adapter("torchserve").parse(b"\xff\xfe not text")
    assert outputs["body"].data == [b"\xff\xfe not text"]


def test_depth_limit_is_exact() -> None:
    check_depth(json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH))
    with pytest.raises(InvalidResponse):
        check_depth(json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)))
    nested_objects = '{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(InvalidResponse):
        loads_object(nested_objects.encode())


def test_tfserving_model_status_of_any_shape_is_a_reason_not_an_exception() -> None:
    assert model_available(DEEP) == "model status is unusable: response nests deeper than 100 levels"
    assert model_available(b'{"model_version_status": "AVAILABLE"}') == "model status lists no versions"
    assert model_available(b"\xff") == "model status is not JSON"


# JSON values of every kind, nested a few levels: what a hostile or broken server might send.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)
OUTPUT_FIELDS = st.fixed_dictionaries(
    {},
    optional={"name": JSON_VALUES, "datatype": JSON_VALUES | st.sampled_from(["FP32", "INT8", "BOOL"]),
              "shape": JSON_VALUES, "data": JSON_VALUES},
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=JSON_VALUES | st.fixed_dictionaries({"outputs": st.lists(OUTPUT_FIELDS, max_size=3)}),
    batch_size=st.integers(0, 4),
)
def test_no_json_document_makes_a_decoder_or_the_comparison_raise_anything_else(
    document: Any, batch_size: int
) -> None:
    body = json.dumps(document).encode()
    for protocol in PROTOCOLS:
        try:
            outputs = adapter(protocol).decode(body, batch_size)
        except InvalidResponse as exc:
            assert "\n" not in str(exc)
            continue
        assert compare_outputs(outputs, outputs, rtol=1e-3, atol=1e-5).matched in (True, False)


# ---- the batch dimension --------------------------------------------------------------------------


def test_an_oip_output_that_does_not_lead_with_the_batch_size_is_invalid() -> None:
    oip = adapter("oip")
    answer = oip_answer(shape=[1, 2])
    assert oip.decode(answer, batch_size=1)["y"].shape == (1, 2)
    with pytest.raises(
        InvalidResponse, match=r"output y: shape \[1, 2\] does not lead with the batch size 4"
    ):
        oip.decode(answer, batch_size=4)
    with pytest.raises(InvalidResponse, match=r"shape \[\] does not lead with the batch size 2"):
        oip.decode(oip_answer(shape=[], data=[1.0]), batch_size=2)
    # No batch dimension (batch_size 0): any shape.
    assert oip.decode(answer, batch_size=0)["y"].shape == (1, 2)


def test_a_tfserving_answer_for_another_batch_is_invalid() -> None:
    tf = adapter("tfserving")
    assert tf.decode(b'{"predictions": [[1, 2], [3, 4]]}', batch_size=2)["predictions"].shape == (2, 2)
    with pytest.raises(
        InvalidResponse, match=r"predictions: shape \[1, 2\] does not lead with the batch size 2"
    ):
        tf.decode(b'{"predictions": [[1, 2]]}', batch_size=2)
    with pytest.raises(InvalidResponse, match=r"output a: shape \[1\] does not lead with the batch size 3"):
        tf.decode(b'{"predictions": [{"a": 1}]}', batch_size=3)


def test_torchserve_and_http_answers_are_the_handlers_own_and_carry_no_batch_rule() -> None:
    assert adapter("torchserve").decode(b'{"y": [1]}', batch_size=8)
    assert adapter("http").decode(b'{"y": [1]}', batch_size=8)


def test_the_request_carries_its_batch_size_to_validate() -> None:
    request = PreparedRequest("POST", "http://x/infer", b"{}", batch_size=3)
    answered = Result(0.01, "", 200, oip_answer(shape=[2]), request=request)
    failed, outputs = validate(adapter("oip"), answered)
    assert outputs is None and failed.kind == INVALID
    assert failed.message.startswith("output y: shape [2] does not lead with the batch size 3")


def test_decode_turns_a_decoder_bug_into_an_invalid_response() -> None:
    class Careless(Adapter):
        name = ""

        def build(self, tensors: Any, batch_size: int) -> PreparedRequest:
            raise NotImplementedError

        def parse(self, body: bytes) -> Outputs:
            return {"y": OutputTensor("y", [int(body)])}

    with pytest.raises(InvalidResponse, match=r"answer cannot be decoded \(ValueError: invalid literal"):
        Careless(server()).decode(b"not a number")


# ---- size ----------------------------------------------------------------------------------------

CAP = 64 * 1024


@pytest.fixture
async def big_answers(aiohttp_server: Any) -> str:
    async def streamed(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the client only learns the size by reading.
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(int(request.query["chunks"])):
            await response.write(b"x" * 16 * 1024)
        await response.write_eof()
        return response

    async def declared(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (CAP + 1))

    async def at_cap(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * CAP)

    app = web.Application()
    app.router.add_post("/streamed", streamed)
    app.router.add_post("/declared", declared)
    app.router.add_post("/at-cap", at_cap)
    test_server = await aiohttp_server(app)
    return str(test_server.make_url("")).rstrip("/")


async def test_an_answer_over_the_cap_is_an_invalid_response_not_read_whole(big_answers: str) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession() as session:
        for path in ("/streamed?chunks=64", "/declared"):  # 1 MiB streamed; one byte over, declared
            result = await send(
                session, PreparedRequest("POST", big_answers + path, b"{}"), timeout, max_body_bytes=CAP
            )
            assert result.kind == INVALID, result
            assert "over the 65,536-byte cap on an answer" in result.message
            assert result.message.endswith(f"from POST {big_answers}{path}")
            assert result.body == b""
        fits = await send(
            session, PreparedRequest("POST", big_answers + "/at-cap", b"{}"), timeout, max_body_bytes=CAP
        )
        assert fits.ok and len(fits.body) == CAP


async def test_read_capped_stops_reading_early(big_answers: str) -> None:
    # A 64 MiB stream against a 64 KiB cap: refused after a few chunks, not after 64 MiB.
    async with (
        aiohttp.ClientSession() as session,
        session.post(big_answers + "/streamed?chunks=4096") as response,
    ):
        with pytest.raises(InvalidResponse, match="stopped reading"):
            await read_capped(response, CAP)
        assert response.content.total_bytes < 4 * 1024 * 1024


async def test_a_health_body_over_the_cap_is_not_ready_not_read_whole(aiohttp_server: Any) -> None:
    async def ready(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(12):  # 12 MiB, streamed: over the 8 MiB cap on health and metadata bodies
            await response.write(b" " * (1024 * 1024))
        return response

    test_server = await aiohttp_server(app_with({"/ready": ready}))
    url = str(test_server.make_url("/ready"))
    async with aiohttp.ClientSession() as session:
        reason = await check_endpoints(session, [Endpoint(url)], 5)
    assert reason == f"GET {url}: answer is over the 8 MiB cap on an answer (stopped reading)"


# ---- model metadata (shapes: auto) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "metadata is unusable: response nests deeper than 100 levels"),
        (b'{"inputs": [{"name": "x", "shape": ["a", 4]}]}', r'shape \["a", 4\] is not a list of int'),
        (b'{"inputs": [{"name": "x", "shape": [NaN]}]}', r"input x: shape \[NaN\] is not a list of integers"),
        (b'{"inputs": [{"name": "x", "shape": [-5]}]}', r"input x: shape \[-5\] is not a list of integers"),
        (b'{"inputs": [{"name": "x", "shape": [[4]]}]}', r"input x: shape \[\[4\]\] is not a list of int"),
        (b'{"inputs": [{"name": "x", "datatype": 7, "shape": [4]}]}', "input x has unsupported datatype 7"),
        (b'{"inputs": [{"name": {"a": 1}, "shape": [4]}]}', r'input 0: name \{"a": 1\} is not a string'),
        (b" " * (9 * 1024 * 1024), "metadata answer of 9,437,184 bytes is over the 8 MiB cap"),
    ],
)  # fmt: skip
async def test_hostile_model_metadata_is_a_metadata_error(
    aiohttp_server: Any, metadata: bytes, reason: str
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=metadata, content_type="application/json")

    test_server = await aiohttp_server(app_with({"/v2/models/m": answer}))
    oip = make_adapter(ServerConfig(url=str(test_server.make_url("")).rstrip("/"), model="m"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(MetadataError, match=reason) as caught:
            await oip.discover_shapes(session, AutoShapes(batch_sizes=[1]), 5)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
