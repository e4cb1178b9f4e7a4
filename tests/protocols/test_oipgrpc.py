"""Protocol oip-grpc: config rules, and requests and answers: every datatype through raw contents
(over a real grpc.aio server), typed contents, malformed answers (never anything but
InvalidResponse). Sending, readiness, metadata and start-up mistakes: test_oipgrpc_transport.py."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.conftest import Adapters, Servers
from tests.protocols.grpcfake import TIMEOUT_2S, FakeOip, adapter_for, answer, config, output
from warmgate.config import ConfigError, ServerConfig
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.protocols import InvalidResponse, make_adapter, validate
from warmgate.tensors import NUMPY_DTYPES, Tensor

pytestmark = pytest.mark.timeout(30)


# ---- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"url": "grpc://127.0.0.1"}, "url needs a port for protocol oip-grpc (gRPC has no default port)"),
        ({"url": "grpc://127.0.0.1:8001/v2"}, "url must be scheme://host:port for protocol oip-grpc"),
        ({"url": "http://127.0.0.1:8001"}, "url must start with grpc:// or grpcs:// for protocol oip-grpc"),
        ({"url": "grpc://user:secret@127.0.0.1:8001"}, "url must not carry credentials"),
        ({"health_path": "/v2/health/ready"}, "health_path is for HTTP protocols"),
        ({"live_path": "/live"}, "live_path is for HTTP protocols"),
        ({"binary_tensors": True}, "binary_tensors is not used by protocol oip-grpc"),
        ({"http": {"path": "/"}}, "http is not used by protocol oip-grpc"),
    ],
)
def test_config_rules_name_the_field_in_one_line(extra: dict[str, Any], problem: str) -> None:
    raw = {"url": "grpc://127.0.0.1:8001", **extra}
    with pytest.raises(ConfigError) as caught:
        make_adapter(config(**raw) if "url" in extra else config(raw.pop("url"), **raw))
    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_valid_urls_and_the_grpc_health_service_option() -> None:
    assert adapter_for("grpcs://models.example:443").secure
    assert adapter_for("grpc://[::1]:8001").target == "[::1]:8001"
    assert adapter_for("grpc://127.0.0.1:8001", grpc_health_service="").server.grpc_health_service == ""
    with pytest.raises(ConfigError, match="grpc_health_service is not used by protocol oip"):
        make_adapter(
            ServerConfig.model_validate({"url": "http://h:1", "protocol": "oip", "grpc_health_service": ""})
        )


def test_importing_the_protocol_loads_no_grpc_protobuf_or_numpy() -> None:

    code = (
        "import sys; from warmgate.protocols.registry import adapters; adapters(); "
        "print(sorted(m for m in ('grpc', 'google.protobuf', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---- requests and answers --------------------------------------------------------------------


def test_build_serialises_one_model_infer_request_with_raw_contents() -> None:
    adapter = adapter_for("grpc://127.0.0.1:8001", model_version="3")
    pixels = np.arange(6, dtype=np.float32).reshape(2, 3)
    request = adapter.build([Tensor("x", "FP32", pixels), Tensor("ids", "INT64", np.array([[7], [8]]))], 2)
    assert (request.method, request.batch_size) == ("gRPC", 2)
    assert request.url == "grpc://127.0.0.1:8001/inference.GRPCInferenceService/ModelInfer"
    assert request.body is not None
    decoded = pb.ModelInferRequest.FromString(request.body)
    assert (decoded.model_name, decoded.model_version) == ("m", "3")
    assert [(t.name, t.datatype, list(t.shape)) for t in decoded.inputs] == [
        ("x", "FP32", [2, 3]),
        ("ids", "INT64", [2, 1]),
    ]
    assert decoded.raw_input_contents == [pixels.tobytes(), np.array([7, 8], dtype="<i8").tobytes()]
    assert not decoded.inputs[0].HasField("contents")


def values_of(datatype: str) -> np.ndarray[Any, Any]:
    """Two rows of awkward values for each datatype: extremes, zero, non-UTF-8 bytes."""
    if datatype == "BYTES":
        return np.array([[b"", b"caf\xc3\xa9", b"\xff\x00"], [b"a" * 300, b"x", b"\n"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = NUMPY_DTYPES[datatype]
    if datatype.startswith(("INT", "UINT")):
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, info.max], [1, info.max - 1, 2]], dtype=dtype)
    return np.array([[0.0, -1.5, 65504.0], [1e-3, 3.25, -0.0]], dtype=dtype)


def expected(datatype: str, values: np.ndarray[Any, Any]) -> list[Any]:
    flat = values.reshape(-1).tolist()
    return [item.decode("utf-8", "backslashreplace") for item in flat] if datatype == "BYTES" else flat


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
async def test_every_datatype_round_trips_through_raw_contents(
    datatype: str, servers: Servers, adapters: Adapters
) -> None:
    port = await servers(FakeOip())
    adapter = adapters(f"grpc://127.0.0.1:{port}")
    values = values_of(datatype)
    result = await adapter.send(None, adapter.build([Tensor("t", datatype, values)], 2), TIMEOUT_2S)
    result, outputs = validate(adapter, result)
    assert result.ok, result.message
    assert outputs is not None
    got = outputs["out_t"]
    assert (got.datatype, got.shape) == (datatype, (2, 3))
    assert got.data == expected(datatype, values)
    assert [type(v) for v in got.data] == [type(v) for v in expected(datatype, values)]


TYPED = {
    "BOOL": ("bool_contents", [True, False]),
    "INT8": ("int_contents", [-128, 127]),
    "INT16": ("int_contents", [-32768, 5]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1]),
    "UINT8": ("uint_contents", [0, 255]),
    "UINT16": ("uint_contents", [1, 65535]),
    "UINT32": ("uint_contents", [0, 2**32 - 1]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1]),
    "FP32": ("fp32_contents", [0.5, -2.25]),
    "FP64": ("fp64_contents", [1e300, -1e-300]),
    "BYTES": ("bytes_contents", [b"ok", b"\xfe"]),
}


@pytest.mark.parametrize("datatype", sorted(TYPED))
def test_typed_contents_answers_decode(datatype: str) -> None:
    field_name, values = TYPED[datatype]
    body = answer(output("y", datatype, [2], **{field_name: values}))
    got = adapter_for("grpc://h:1").decode(body, 2)["y"]
    want = [v.decode("utf-8", "backslashreplace") for v in values] if datatype == "BYTES" else values
    assert (got.data, got.shape, got.datatype) == (want, (2,), datatype)


def test_bf16_raw_contents_decode_as_the_upper_half_of_fp32() -> None:
    floats = np.array([1.0, -2.5, 0.15625, 3.0e38], dtype="<f4")
    bf16 = (floats.view("<u4") >> 16).astype("<u2").tobytes()
    got = adapter_for("grpc://h:1").decode(answer(output("y", "BF16", [4]), raw=[bf16]), 4)["y"]
    assert got.data == pytest.approx([1.0, -2.5, 0.15625, 3.0e38], rel=1e-2)


HUGE = 2**62


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xff\xff\xff", "answer is not a ModelInferResponse"),
        (answer(), "response has no outputs"),
        (
            answer(output("y", "FP32", [2]), raw=[b"\x00" * 7]),
            "7 raw bytes cannot be a FP32 tensor of shape [2]",
        ),
        (
            answer(output("a", "FP32", [1]), output("b", "FP32", [1]), raw=[b"\x00" * 4]),
            "response has 2 outputs but 1 raw_output_contents",
        ),
        (
            answer(output("y", "FLOAT32", [1], fp32_contents=[1.0])),
            "datatype 'FLOAT32' is not an Open Inference",
        ),
        (answer(output("y", "FP32", [-1], fp32_contents=[1.0])), "element 0 is negative"),
        (answer(output("y", "FP32", [1] * 65)), "65 dimensions, more than 64"),
        (answer(output("y", "FP32", [HUGE, HUGE]), raw=[b"\x00" * 8]), "8 raw bytes cannot be a FP32 tensor"),
        (answer(output("y", "BYTES", [HUGE]), raw=[b"\x01\x00\x00\x00a"]), "BYTES contents hold 1 elements"),
        (
            answer(output("y", "FP32", [HUGE], fp32_contents=[1.0])),
            "holds 4,611,686,018,427,387,904 values, data has 1",
        ),
        (answer(output("y", "FP16", [1])), "datatype FP16 comes only as raw_output_contents"),
        (answer(output("y", "INT8", [1], int_contents=[300])), "value 300 is out of range for INT8"),
        (answer(output("y", "BYTES", [1]), raw=[b"\xff\x00\x00\x00ab"]), "BYTES element 0 claims 255 bytes"),
        (answer(output("y", "BF16", [2]), raw=[b"\x00" * 3]), "3 raw bytes cannot be a BF16 tensor"),
        (answer(output("y", "FP32", [3, 1], fp32_contents=[1, 2, 3])), "does not lead with the batch size 2"),
    ],
)
def test_malformed_answers_are_invalid_responses_in_one_line(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidResponse) as caught:
        adapter_for("grpc://h:1").decode(body, 2)
    assert problem in str(caught.value) and "\n" not in str(caught.value)


VALID = answer(output("y", "FP32", [2, 2]), raw=[np.arange(4, dtype="<f4").tobytes()])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=200), st.tuples(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8))
    )
)
def test_no_bytes_make_the_decoder_raise_anything_but_invalid_response(mutation: Any) -> None:
    if isinstance(mutation, tuple):  # a valid answer with some bytes overwritten
        at, patch = mutation
        body = VALID[:at] + patch + VALID[at + len(patch) :]
    else:
        body = mutation
    try:
        adapter_for("grpc://h:1").decode(body, 2)
    except InvalidResponse as exc:
        assert "\n" not in str(exc)
