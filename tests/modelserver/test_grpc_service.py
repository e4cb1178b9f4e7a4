"""`warmgate serve --grpc-port`: the Open Inference Protocol's gRPC service and the standard health
service, against real server processes and real ONNX models, through clients built from the stubs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.modelserver import models
from tests.modelserver.grpcclient import (
    DEADLINE_S,
    channel,
    failure,
    raw_request,
    wait_for_port,
    worker_of,
)
from tests.modelserver.procs import REPO, ServerProcess
from tests.modelserver.test_server import metric
from tests.support.procs import free_port
from warmgate import __version__
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.grpcapi import open_inference_grpc_pb2_grpc as pb_grpc
from warmgate.tensors import from_raw

StartServer = Callable[..., ServerProcess]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
EVERY_TYPE = list(models.ONNX_TYPES)
# Every datatype that has a typed contents field (FP16 travels only as raw contents).
TYPED = [t for t in EVERY_TYPE if t != "FP16"]
MAX_REQUEST_BYTES = 10_000


def typed_contents(datatype: str, array: np.ndarray) -> pb.InferTensorContents:
    field = {
        "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
        "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
        "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
        "FP64": "fp64_contents", "BYTES": "bytes_contents",
    }[datatype]  # fmt: skip
    return pb.InferTensorContents(**{field: array.reshape(-1).tolist()})


def mixed_inputs(batch: int = 1) -> dict[str, tuple[str, np.ndarray]]:
    a = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4) - 1.5
    n = np.arange(batch * 4, dtype=np.int64).reshape(batch, 4)
    return {"a": ("FP32", a), "n": ("INT64", n)}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    """Three servers for the module, started together: the mixed model with small limits, an
    identity over every datatype, and one over every datatype with a typed contents field."""
    where = tmp_path_factory.mktemp("grpc-models")
    paths = {
        "mixed": models.mixed(where / "mixed.onnx"),
        "every": models.identities(where / "every.onnx", EVERY_TYPE),
        "typed": models.identities(where / "typed.onnx", TYPED),
    }
    started = {}
    for name, path in paths.items():
        limits = ["--max-batch-size", "4", "--max-request-mb", str(MAX_REQUEST_BYTES / 2**20)]
        started[name] = ServerProcess(
            ["--model", str(path), "--grpc-port", "0", "--port", "0", "--host", "127.0.0.1",
             "--cache-dir", str(cache_dir), *(limits if name == "mixed" else [])]
        )  # fmt: skip
    try:
        for server in started.values():
            server.wait_ready()
            assert re.fullmatch(r"127\.0\.0\.1:\d+", server.grpc_target), server.output
        yield started
    finally:
        for server in started.values():
            server.close()


async def test_every_rpc_before_and_after_the_model_loads(start_server: StartServer, tmp_path: Path) -> None:
    # In-process warmup of a model that takes seconds: the window in which the server is live, not ready.
    slow = models.slow(tmp_path / "slow.onnx", size=768)
    port = free_port()
    server = start_server(
        "--model", str(slow), "--grpc-port", str(port), "--threads", "1",
        "--warmup-batch-sizes", "1", "--warmup-count", "6",
    )  # fmt: skip
    await wait_for_port(port)
    x = np.eye(768, dtype=np.float32)
    request = raw_request("slow", {"steps": ("INT64", np.array([1])), "x": ("FP32", x)})
    async with channel(f"127.0.0.1:{port}") as chan:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        health = health_pb2_grpc.HealthStub(chan)
        loading = re.compile(r"model slow is (loading|warming)")
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=DEADLINE_S)).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=DEADLINE_S)).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="slow"), timeout=DEADLINE_S)).ready
        error = await failure(stub.ModelMetadata(pb.ModelMetadataRequest(name="slow"), timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and loading.fullmatch(error.details())
        error = await failure(stub.ModelInfer(request, timeout=DEADLINE_S))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert re.fullmatch(r"not ready: model slow is (loading|warming)", error.details())
        for service in ("", "slow"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
            assert answer.status == NOT_SERVING
        assert "ready:" not in server.output, "the model loaded before the checks: make it slower"

        server.wait_ready()
        assert server.grpc_target == f"127.0.0.1:{port}"
        assert (await stub.ServerReady(pb.ServerReadyRequest(), timeout=DEADLINE_S)).ready
        assert (
            await stub.ModelReady(pb.ModelReadyRequest(name="slow", version="1"), timeout=DEADLINE_S)
        ).ready
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="slow"), timeout=DEADLINE_S)
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("steps", "INT64", [1]),
            ("x", "FP32", [768, 768]),
        ]
        answer = await stub.ModelInfer(request, timeout=DEADLINE_S)
        assert [(o.name, list(o.shape)) for o in answer.outputs] == [("y", [768, 768])]
        for service in ("", "slow"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
            assert answer.status == SERVING
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


async def test_server_and_model_metadata(servers: dict[str, ServerProcess]) -> None:
    async with channel(servers["mixed"].grpc_target) as chan:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=DEADLINE_S)
        assert (server.name, server.version) == ("warmgate-modelserver", __version__)
        assert list(server.extensions) == ["binary_tensor_data"]
        for version in ("", "1"):
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="mixed", version=version))
            assert (meta.name, list(meta.versions), meta.platform) == ("mixed", ["1"], "onnxruntime_onnx")
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
                ("a", "FP32", [-1, 4]),
                ("n", "INT64", [-1, 4]),
            ]
            assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
                ("total", "FP32", [-1, 4]),
                ("flag", "BOOL", [-1]),
            ]
            assert dict(meta.properties) == {"device": "cpu", "providers": "CPUExecutionProvider"}
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live


async def test_raw_contents_round_trip_every_datatype(servers: dict[str, ServerProcess]) -> None:
    tensors = {f"x_{t.lower()}": (t, models.sample(t)) for t in EVERY_TYPE}
    async with channel(servers["every"].grpc_target) as chan:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        answer = await stub.ModelInfer(raw_request("every", tensors, id="req-7"), timeout=DEADLINE_S)
    assert (answer.model_name, answer.model_version, answer.id) == ("every", "1", "req-7")
    assert [o.name for o in answer.outputs] == [f"y_{t.lower()}" for t in EVERY_TYPE]
    assert len(answer.raw_output_contents) == len(EVERY_TYPE)
    for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
        datatype, sent = tensors["x" + output.name[1:]]
        assert output.datatype == datatype and list(output.shape) == [2, 2]
        np.testing.assert_array_equal(from_raw(datatype, list(output.shape), raw), sent, err_msg=datatype)


async def test_typed_contents_and_requested_outputs(servers: dict[str, ServerProcess]) -> None:
    request = pb.ModelInferRequest(model_name="typed", model_version="1")
    for datatype in TYPED:
        array = models.sample(datatype)
        request.inputs.add(
            name=f"x_{datatype.lower()}",
            datatype=datatype,
            shape=[2, 2],
            contents=typed_contents(datatype, array),
        )
    async with channel(servers["typed"].grpc_target) as chan:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        answer = await stub.ModelInfer(request, timeout=DEADLINE_S)
        assert [o.name for o in answer.outputs] == [f"y_{t.lower()}" for t in TYPED]
        for output, raw in zip(answer.outputs, answer.raw_output_contents, strict=True):
            want = models.sample(output.datatype)
            np.testing.assert_array_equal(
                from_raw(output.datatype, [2, 2], raw), want, err_msg=output.datatype
            )
        # Only the requested outputs, in the requested order.
        request.outputs.add(name="y_bytes")
        request.outputs.add(name="y_int8")
        answer = await stub.ModelInfer(request, timeout=DEADLINE_S)
    assert [o.name for o in answer.outputs] == ["y_bytes", "y_int8"]
    assert from_raw("INT8", [2, 2], answer.raw_output_contents[1]).tolist() == [[-128, 127], [0, 1]]


async def test_mistakes_get_the_http_message_and_the_matching_code(servers: dict[str, ServerProcess]) -> None:
    """The same mistake over HTTP/JSON and over gRPC: the same one-line message, the matching code."""
    server = servers["mixed"]

    def json_inputs(inputs: dict[str, tuple[str, np.ndarray]]) -> list[dict[str, object]]:
        return [
            {"name": k, "datatype": t, "shape": list(a.shape), "data": a.ravel().tolist()}
            for k, (t, a) in inputs.items()
        ]

    good = mixed_inputs()
    wide = {"a": ("FP32", np.zeros((1, 5), np.float32)), "n": good["n"]}
    as_int = {"a": ("INT64", np.zeros((1, 4), np.int64)), "n": good["n"]}
    cases = [
        # (model, version, inputs, requested outputs, HTTP status, gRPC code)
        ("other", None, good, None, 404, grpc.StatusCode.NOT_FOUND),
        ("mixed", "2", good, None, 404, grpc.StatusCode.NOT_FOUND),
        ("mixed", None, {"n": good["n"]}, None, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ("mixed", None, wide, None, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ("mixed", None, as_int, None, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ("mixed", None, mixed_inputs(5), None, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ("mixed", None, good, ["nope"], 400, grpc.StatusCode.INVALID_ARGUMENT),
        ("mixed", None, {**good, "b": good["a"]}, None, 400, grpc.StatusCode.INVALID_ARGUMENT),
    ]
    async with channel(server.grpc_target) as chan, aiohttp.ClientSession() as session:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        for model, version, inputs, outputs, status, code in cases:
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
            body: dict[str, object] = {"inputs": json_inputs(inputs)}
            request = raw_request(model, inputs, model_version=version or "")
            if outputs:
                body["outputs"] = [{"name": name} for name in outputs]
                for name in outputs:
                    request.outputs.add(name=name)
            async with session.post(server.url + path, json=body) as response:
                assert response.status == status
                message = (await response.json())["error"]
            error = await failure(stub.ModelInfer(request, timeout=DEADLINE_S))
            assert (error.code(), error.details()) == (code, message)
        # Unknown model or version in the other RPCs too.
        for rpc, kind in (
            (stub.ModelReady, pb.ModelReadyRequest),
            (stub.ModelMetadata, pb.ModelMetadataRequest),
        ):
            error = await failure(rpc(kind(name="mixed", version="3"), timeout=DEADLINE_S))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert error.details() == "model 'mixed' has no version '3'; it has '1'"


async def test_mistakes_only_grpc_can_make(servers: dict[str, ServerProcess]) -> None:
    good = mixed_inputs()
    a_bytes = good["a"][1].tobytes()
    short = raw_request("mixed", good)
    short.raw_input_contents[0] = a_bytes[:12]
    one_raw = raw_request("mixed", good)
    del one_raw.raw_input_contents[1]
    both = raw_request("mixed", good)
    both.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    stray = pb.ModelInferRequest(model_name="mixed")
    stray.inputs.add(
        name="a", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(int_contents=[1] * 4)
    )
    too_few = pb.ModelInferRequest(model_name="mixed")
    too_few.inputs.add(
        name="a", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[1] * 3)
    )
    half = pb.ModelInferRequest(model_name="every")
    half.inputs.add(
        name="x_fp16", datatype="FP16", shape=[1, 2], contents=pb.InferTensorContents(fp32_contents=[1] * 2)
    )
    wide = pb.ModelInferRequest(model_name="typed")
    wide.inputs.add(
        name="x_int8", datatype="INT8", shape=[1, 2], contents=pb.InferTensorContents(int_contents=[300, 1])
    )
    big = raw_request("mixed", {"a": ("FP32", np.zeros((4, 4), np.float32)), "n": good["n"]})
    big.raw_input_contents[0] = bytes(MAX_REQUEST_BYTES + 1)
    cases = [
        ("mixed", short, "input 'a': 12 raw bytes cannot be a FP32 tensor of shape [1, 4] (16 bytes)"),
        ("mixed", one_raw, "raw_input_contents has 1 entries for 2 inputs: with raw contents every input "
                           "needs one, in order"),
        ("mixed", both, "input 'a': both contents and raw_input_contents given; use one"),
        ("mixed", stray, "input 'a': FP32 data belongs in contents.fp32_contents, got contents.int_contents"),
        ("mixed", too_few, "input 'a': shape [1, 4] needs 4 elements, data has 3"),
        ("mixed", pb.ModelInferRequest(model_name="mixed"), "inputs must be a non-empty list"),
        ("every", half, "input 'x_fp16': FP16 has no typed contents field; send it in raw_input_contents"),
        ("typed", wide, "input 'x_int8': values out of range for INT8"),
    ]  # fmt: skip
    for server, request, details in cases:
        async with channel(servers[server].grpc_target) as chan:
            error = await failure(
                pb_grpc.GRPCInferenceServiceStub(chan).ModelInfer(request, timeout=DEADLINE_S)
            )
        assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, details)
    # Over --max-request-mb: refused by gRPC before the message is read.
    async with channel(servers["mixed"].grpc_target) as chan:
        error = await failure(pb_grpc.GRPCInferenceServiceStub(chan).ModelInfer(big, timeout=DEADLINE_S))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"larger than max \(\d+ vs\. 10000\)", error.details()), error.details()


async def test_every_answer_names_its_worker_and_counts_in_the_server_metrics(
    servers: dict[str, ServerProcess],
) -> None:
    server = servers["mixed"]
    pid = str(server.pid)
    ok = 'warmgate_modelserver_requests_total{code="200",model="mixed"}'
    bad = 'warmgate_modelserver_requests_total{code="400",model="mixed"}'
    timed = 'warmgate_modelserver_request_duration_seconds_count{batch_size="3",model="mixed"}'
    async with aiohttp.ClientSession() as session, channel(server.grpc_target) as chan:
        before = [await metric(session, server.url, name) for name in (ok, bad, timed)]
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        for _ in range(2):
            call = stub.ModelInfer(raw_request("mixed", mixed_inputs(3)), timeout=DEADLINE_S)
            answer = await call
            assert await worker_of(call) == pid
        total = from_raw("FP32", list(answer.outputs[0].shape), answer.raw_output_contents[0])
        a, n = mixed_inputs(3)["a"][1], mixed_inputs(3)["n"][1]
        np.testing.assert_array_equal(total, a * 2 + n)
        assert from_raw("BOOL", [3], answer.raw_output_contents[1]).tolist() == (a.sum(axis=1) > 0).tolist()
        call = stub.ModelInfer(raw_request("mixed", {"a": mixed_inputs()["a"]}), timeout=DEADLINE_S)
        assert (await failure(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await worker_of(call) == pid
        call = stub.ServerLive(pb.ServerLiveRequest(), timeout=DEADLINE_S)
        await call
        assert await worker_of(call) == pid
        after = [await metric(session, server.url, name) for name in (ok, bad, timed)]
    assert [b - a for a, b in zip(before, after, strict=True)] == [2, 1, 2]


async def test_health_service_check_and_watch(servers: dict[str, ServerProcess]) -> None:
    async with channel(servers["mixed"].grpc_target) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        for service in ("", "mixed"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=DEADLINE_S)
            assert answer.status == SERVING
        error = await failure(
            health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=DEADLINE_S)
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error.details() == "unknown service 'other'; known: '' and 'mixed'"
        watch = health.Watch(health_pb2.HealthCheckRequest(service="mixed"), timeout=DEADLINE_S)
        assert (await watch.read()).status == SERVING
        watch.cancel()
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="other"), timeout=DEADLINE_S)
        assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


async def test_two_workers_answer_on_one_grpc_port_set_by_the_environment(
    start_server: StartServer, cache_dir: Path
) -> None:
    env = {**os.environ, "WARMGATE_GRPC_PORT": "0"}
    server = start_server("--demo", "--workers", "2", env=env)
    server.wait_ready()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", server.grpc_target), server.output
    workers = {str(child.pid) for child in psutil.Process(server.pid).children()}
    assert len(workers) == 2
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    seen: set[str] = set()
    # A channel per call with its own connection: SO_REUSEPORT spreads connections, not calls.
    for _ in range(24):
        async with channel(server.grpc_target, own_connection=True) as chan:
            call = pb_grpc.GRPCInferenceServiceStub(chan).ModelInfer(
                raw_request("demo", {"input": ("FP32", x)}), timeout=DEADLINE_S
            )
            answer = await call
            assert list(answer.outputs[0].shape) == [1, 10]
            seen.add(await worker_of(call))
        if seen == workers:
            break
    assert seen == workers
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


async def test_term_finishes_the_in_flight_call_refuses_new_ones_and_ends_watches(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(
        "--model", str(models.slow(tmp_path / "slow.onnx")), "--grpc-port", "0", "--graceful-timeout", "30"
    )
    server.wait_ready()
    x = np.eye(128, dtype=np.float32) * 0.5

    def request(steps: int) -> pb.ModelInferRequest:
        return raw_request("slow", {"steps": ("INT64", np.array([steps])), "x": ("FP32", x)})

    async with channel(server.grpc_target) as chan, aiohttp.ClientSession() as session:
        stub = pb_grpc.GRPCInferenceServiceStub(chan)
        started = time.perf_counter()
        await stub.ModelInfer(request(200), timeout=DEADLINE_S)
        per_step = (time.perf_counter() - started) / 200
        watch = health_pb2_grpc.HealthStub(chan).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S
        )
        assert (await watch.read()).status == SERVING
        # About two seconds of compute: long enough to signal the server and probe it meanwhile.
        in_flight = asyncio.ensure_future(stub.ModelInfer(request(int(2 / per_step)), timeout=DEADLINE_S))
        deadline = time.monotonic() + DEADLINE_S
        while await metric(session, server.url, "warmgate_modelserver_in_flight_requests") < 1:
            assert time.monotonic() < deadline and not in_flight.done()
        server.signal(signal.SIGTERM)
        # The health watch says so and ends, so it does not hold the drain.
        assert (await watch.read()).status == NOT_SERVING
        assert await watch.read() == grpc.aio.EOF
        # New connections are refused while the old call runs on.
        while True:
            async with channel(server.grpc_target, own_connection=True) as fresh:
                try:
                    await pb_grpc.GRPCInferenceServiceStub(fresh).ServerLive(
                        pb.ServerLiveRequest(), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    break
            assert time.monotonic() < deadline
        assert not in_flight.done()
        answer = await in_flight
        assert [(o.name, list(o.shape)) for o in answer.outputs] == [("y", [128, 128])]
    assert server.wait() == 0
    assert "stopped (drained in" in server.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_grpc_port_is_one_line_and_exit_1(workers: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(
            "--demo",
            "--port",
            "0",
            "--grpc-port",
            str(port),
            "--workers",
            workers,
            "--cache-dir",
            str(tmp_path),
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on grpc://127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--grpc-port", "abc"], {}, "--grpc-port: must be 0..65535 or off, got 'abc'"),
        (["--grpc-port", "70000"], {}, "--grpc-port: must be 0..65535 or off, got '70000'"),
        ([], {"WARMGATE_GRPC_PORT": "-1"}, "WARMGATE_GRPC_PORT: must be 0..65535 or off, got '-1'"),
        (
            ["--port", "9123", "--grpc-port", "9123"],
            {},
            "--grpc-port: must differ from --port, both are 9123",
        ),
    ],
)
def test_bad_grpc_ports_exit_2_with_one_line(
    args: list[str], env: dict[str, str], fragment: str, tmp_path: Path
) -> None:
    result = run_serve("--demo", *args, "--cache-dir", str(tmp_path), env=env)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_off_turns_an_inherited_grpc_port_off(start_server: StartServer) -> None:
    server = start_server("--demo", "--grpc-port", "off", env={**os.environ, "WARMGATE_GRPC_PORT": "0"})
    server.wait_ready()
    assert server.grpc_target == "" and "grpc://" not in server.output


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", "serve", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
