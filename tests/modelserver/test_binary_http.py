"""The REST binary tensor extension (Triton's `binary_data`) of `warmgate serve`, against real server
processes and real ONNX models: binary requests and answers, mixed JSON and binary inputs, and
every malformed body answered 400 with one line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.modelserver import models
from tests.modelserver.procs import ServerProcess
from warmgate.modelserver.dataplane import WORKER_HEADER
from warmgate.tensors import from_raw, to_raw

HEADER = "Inference-Header-Content-Length"
EVERY_TYPE = list(models.ONNX_TYPES)
A = np.array([[-1.5, 0.25, 3.0, 4.5]], dtype=np.float32)
N = np.array([[1, -2, 3, 2**40]], dtype=np.int64)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[dict[str, str]]:
    """The URLs of two servers: the mixed model and an identity over every datatype."""
    where = tmp_path_factory.mktemp("binary-models")
    paths = {
        "mixed": models.mixed(where / "mixed.onnx"),
        "every": models.identities(where / "every.onnx", EVERY_TYPE),
    }
    started = {
        name: ServerProcess(
            ["--model", str(path), "--port", "0", "--host", "127.0.0.1", "--cache-dir", str(cache_dir)]
        )
        for name, path in paths.items()
    }
    try:
        yield {name: server.wait_ready() for name, server in started.items()}
    finally:
        for server in started.values():
            server.close()


def binary_input(name: str, datatype: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    raw = to_raw(datatype, array)
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    return tensor, raw


def json_input(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def binary_body(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, aiohttp.ClientResponse, bytes]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, response, await response.read()


def split_answer(headers: Any, raw: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header and the binary outputs of a binary answer, checking that the sizes add up."""
    length = int(headers[HEADER])
    header = json.loads(raw[:length])
    offset, arrays = length, {}
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            assert "data" not in output
            arrays[output["name"]] = from_raw(
                output["datatype"], output["shape"], raw[offset : offset + size]
            )
            offset += size
    assert offset == len(raw)
    return header, arrays


async def test_binary_request_and_binary_answer(servers: dict[str, str]) -> None:
    a, a_raw = binary_input("a", "FP32", A)
    n, n_raw = binary_input("n", "INT64", N)
    body, headers = binary_body(
        {"id": "b1", "inputs": [a, n], "parameters": {"binary_data_output": True}}, [a_raw, n_raw]
    )
    async with aiohttp.ClientSession() as session:
        status, response, raw = await post(
            session, f"{servers['mixed']}/v2/models/mixed/infer", body, headers
        )
    assert status == 200, raw
    assert response.content_type == "application/octet-stream"
    assert response.headers[WORKER_HEADER]
    header, arrays = split_answer(response.headers, raw)
    assert (header["model_name"], header["id"]) == ("mixed", "b1")
    assert [(o["name"], o["datatype"], o["shape"]) for o in header["outputs"]] == [
        ("total", "FP32", [1, 4]),
        ("flag", "BOOL", [1]),
    ]
    np.testing.assert_array_equal(arrays["total"], A * 2 + N.astype(np.float32))
    assert arrays["flag"].tolist() == [True]


async def test_every_datatype_round_trips_as_binary(servers: dict[str, str]) -> None:
    tensors = [binary_input(f"x_{t.lower()}", t, models.sample(t)) for t in EVERY_TYPE]
    header = {"inputs": [t for t, _ in tensors], "parameters": {"binary_data_output": True}}
    body, headers = binary_body(header, [raw for _, raw in tensors])
    async with aiohttp.ClientSession() as session:
        status, response, raw = await post(
            session, f"{servers['every']}/v2/models/every/infer", body, headers
        )
    assert status == 200, raw
    _, arrays = split_answer(response.headers, raw)
    assert list(arrays) == [f"y_{t.lower()}" for t in EVERY_TYPE]
    for datatype in EVERY_TYPE:
        np.testing.assert_array_equal(
            arrays[f"y_{datatype.lower()}"], models.sample(datatype), err_msg=datatype
        )


async def test_mixed_json_and_binary_inputs_and_outputs(servers: dict[str, str]) -> None:
    url = f"{servers['mixed']}/v2/models/mixed/infer"
    a, a_raw = binary_input("a", "FP32", A)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, json={"inputs": [json_input("a", "FP32", A), json_input("n", "INT64", N)]}
        ) as response:
            assert response.status == 200
            all_json = await response.json()
        # One input binary, one JSON; no binary output asked for: the answer is plain JSON, the same.
        body, headers = binary_body({"inputs": [a, json_input("n", "INT64", N)]}, [a_raw])
        status, response, raw = await post(session, url, body, headers)
        assert status == 200 and response.content_type == "application/json"
        assert json.loads(raw) == all_json
        # Per output: its own binary_data wins over the request's binary_data_output.
        outputs = [{"name": "flag", "parameters": {"binary_data": False}}, {"name": "total"}]
        header = {
            "inputs": [json_input("n", "INT64", N), a],
            "outputs": outputs,
            "parameters": {"binary_data_output": True},
        }
        status, response, raw = await post(session, url, *binary_body(header, [a_raw]))
        assert status == 200 and response.content_type == "application/octet-stream"
        header, arrays = split_answer(response.headers, raw)
        assert [o["name"] for o in header["outputs"]] == ["flag", "total"]
        assert header["outputs"][0]["data"] == [True] and list(arrays) == ["total"]
        np.testing.assert_array_equal(
            arrays["total"], np.array(all_json["outputs"][0]["data"], np.float32).reshape(1, 4)
        )
        # A binary output asked for by a JSON-only request: the header length is the whole JSON part.
        outputs = [{"name": "total", "parameters": {"binary_data": True}}]
        request = {"inputs": [json_input("a", "FP32", A), json_input("n", "INT64", N)], "outputs": outputs}
        async with session.post(url, json=request) as response:
            header, arrays = split_answer(response.headers, await response.read())
        assert [o["name"] for o in header["outputs"]] == ["total"] and arrays["total"].shape == (1, 4)


def malformed_cases() -> list[tuple[str, bytes, dict[str, str], str]]:
    a, a_raw = binary_input("a", "FP32", A)
    n, n_raw = binary_input("n", "INT64", N)
    body, headers = binary_body({"inputs": [a, n]}, [a_raw, n_raw])
    length = int(headers[HEADER])

    def with_a(**changes: Any) -> dict[str, Any]:
        return {"inputs": [{**a, **changes}, n]}

    def case(header: dict[str, Any], chunks: list[bytes], **extra: str) -> tuple[bytes, dict[str, str]]:
        data, head = binary_body(header, chunks)
        return data, {**head, **extra}

    both = [a_raw, n_raw]
    n_too_big = {"inputs": [a, {**n, "parameters": {"binary_data_size": 64}}]}
    bad_output_flag = {"inputs": [a, n], "outputs": [{"name": "flag", "parameters": {"binary_data": 1}}]}
    bad_flag = {"inputs": [a, n], "parameters": {"binary_data_output": "yes"}}
    beyond = len(body) + 1
    short = [a_raw[:12], n_raw]
    return [
        ("not a number", body, {HEADER: "abc"}, f"{HEADER} must be a non-negative integer, got 'abc'"),
        ("negative", body, {HEADER: "-5"}, f"{HEADER} must be a non-negative integer, got '-5'"),
        ("beyond the body", body, {HEADER: str(beyond)},
         f"{HEADER} {beyond} exceeds the {len(body)}-byte body"),
        ("header cut short", body, {HEADER: str(length - 1)}, "request body is not valid JSON"),
        ("size beyond the data", *case(n_too_big, both),
         "input 'n': binary_data_size 64 exceeds the 32 bytes of binary data left"),
        ("bytes left over", *case({"inputs": [a, n]}, [*both, b"tail"]),
         "4 bytes of binary data follow the inputs' binary_data_size total of 48"),
        ("size does not fit the shape", *case(with_a(parameters={"binary_data_size": 12}), short),
         "input 'a': 12 raw bytes cannot be a FP32 tensor of shape [1, 4] (16 bytes)"),
        ("no header", json.dumps({"inputs": [a, n]}).encode() + a_raw + n_raw, {},
         "request body is not valid JSON"),
        ("size without the header", json.dumps({"inputs": [a, n]}).encode(), {},
         f"input 'a': parameters.binary_data_size needs the {HEADER} header"),
        ("data and size", *case(with_a(data=A.ravel().tolist()), both),
         "input 'a': has both data and parameters.binary_data_size"),
        ("size as a string", *case(with_a(parameters={"binary_data_size": "16"}), both),
         "input 'a': binary_data_size must be a non-negative integer, got '16'"),
        ("parameters not an object", *case(with_a(parameters=[16]), both),
         "input 'a': parameters must be an object"),
        ("binary_data_output not a flag", *case(bad_flag, both),
         "parameters.binary_data_output must be true or false, got 'yes'"),
        ("binary_data not a flag", *case(bad_output_flag, both),
         "outputs[0].parameters.binary_data must be true or false, got 1"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "message"), [c[1:] for c in malformed_cases()], ids=[c[0] for c in malformed_cases()]
)
async def test_malformed_binary_requests_are_400_with_one_line(
    servers: dict[str, str], body: bytes, headers: dict[str, str], message: str
) -> None:
    async with aiohttp.ClientSession() as session:
        status, response, raw = await post(
            session, f"{servers['mixed']}/v2/models/mixed/infer", body, headers
        )
    assert status == 400 and response.content_type == "application/json"
    error = json.loads(raw)["error"]
    assert error.startswith(message) and "\n" not in error, error


async def test_malformed_binary_bytes_elements_are_400(servers: dict[str, str]) -> None:
    tensors = [binary_input(f"x_{t.lower()}", t, models.sample(t)) for t in EVERY_TYPE]
    chunks = [raw for _, raw in tensors]
    # The last element claims more bytes than the BYTES tensor's data holds.
    chunks[-1] = chunks[-1][:-1]
    header = {"inputs": [t for t, _ in tensors]}
    header["inputs"][-1]["parameters"]["binary_data_size"] -= 1
    async with aiohttp.ClientSession() as session:
        status, _, raw = await post(
            session, f"{servers['every']}/v2/models/every/infer", *binary_body(header, chunks)
        )
    assert status == 400
    assert json.loads(raw)["error"] == "input 'x_bytes': BYTES element 3 claims 40 bytes; 39 remain"
