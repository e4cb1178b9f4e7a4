"""Open Inference Protocol conformance of the app, served in-process by a real loopback server with
real ONNX Runtime sessions over models built by the tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from aiohttp.test_utils import TestClient
from onnx import TensorProto
from prometheus_client import CollectorRegistry

from tests.modelserver import models
from warmgate.modelserver.app import WORKER_HEADER, ModelState, ServerContext, build_app
from warmgate.modelserver.metrics import ServerMetrics
from warmgate.modelserver.runtime import RuntimeSpec, load

MakeClient = Callable[..., Awaitable[tuple[TestClient, ServerContext]]]


@pytest.fixture
async def make_client(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> AsyncIterator[MakeClient]:
    executors: list[ThreadPoolExecutor] = []

    async def make(
        path: Path, *, ready: bool = True, max_batch_size: int = 8, max_request_bytes: int = 1 << 20
    ) -> tuple[TestClient, ServerContext]:
        runtime = load(RuntimeSpec(kind="onnx", model_path=path, model_name="m", device="cpu"))
        executor = ThreadPoolExecutor(2)
        executors.append(executor)
        state = ModelState(
            runtime=runtime, executor=executor, ready=ready, phase="ready" if ready else "loading"
        )
        metrics = ServerMetrics(CollectorRegistry(), worker="w1")
        context = ServerContext(
            model_name="m", model_version="1", state=state, metrics=metrics, worker="w1",
            max_batch_size=max_batch_size,
        )  # fmt: skip
        return await aiohttp_client(build_app(context, max_request_bytes)), context

    yield make
    for executor in executors:
        executor.shutdown()


def tensor(name: str, shape: list[int], datatype: str, data: object) -> dict[str, object]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


async def test_health_and_metadata_endpoints(make_client: MakeClient, tmp_path: Path) -> None:
    client, _ = await make_client(models.mixed(tmp_path / "mixed.onnx"))
    response = await client.get("/v2")
    assert response.status == 200
    assert (await response.json())["name"] == "warmgate-modelserver"
    assert (await client.get("/v2/health/live")).status == 200
    response = await client.get("/v2/health/ready")
    assert response.status == 200 and await response.json() == {"ready": True}
    for path in ("/v2/models/m", "/v2/models/m/versions/1"):
        response = await client.get(path)
        assert response.status == 200
        meta = await response.json()
        assert meta["name"] == "m" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [
            {"name": "a", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "n", "datatype": "INT64", "shape": [-1, 4]},
        ]
        assert meta["outputs"][1] == {"name": "flag", "datatype": "BOOL", "shape": [-1]}
        assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    response = await client.get("/v2/models/m/ready")
    assert response.status == 200 and await response.json() == {"name": "m", "ready": True}


async def test_infer_matches_the_model_and_every_response_names_its_worker(
    make_client: MakeClient, tmp_path: Path
) -> None:
    path = models.mixed(tmp_path / "mixed.onnx")
    client, _ = await make_client(path)
    a = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5
    n = np.arange(8, dtype=np.int64).reshape(2, 4)
    request = {
        "id": "r1",
        "inputs": [tensor("a", [2, 4], "FP32", a.tolist()), tensor("n", [2, 4], "INT64", n.ravel().tolist())],
    }
    response = await client.post("/v2/models/m/versions/1/infer", json=request)
    assert response.status == 200
    assert response.headers[WORKER_HEADER] == "w1"
    result = await response.json()
    assert result["model_name"] == "m" and result["model_version"] == "1" and result["id"] == "r1"
    want = ort.InferenceSession(str(path)).run(None, {"a": a, "n": n})
    total, flag = result["outputs"]
    assert total["name"] == "total" and total["datatype"] == "FP32" and total["shape"] == [2, 4]
    np.testing.assert_array_equal(np.array(total["data"], dtype=np.float32).reshape(2, 4), want[0])
    assert flag == {"name": "flag", "datatype": "BOOL", "shape": [2], "data": want[1].tolist()}
    # Only the requested outputs come back.
    response = await client.post("/v2/models/m/infer", json={**request, "outputs": [{"name": "flag"}]})
    assert [o["name"] for o in (await response.json())["outputs"]] == ["flag"]
    # Errors carry the header too.
    assert (await client.get("/nope")).headers[WORKER_HEADER] == "w1"


@pytest.mark.parametrize(
    ("elem_type", "datatype", "dims", "shape", "data", "expected"),
    [
        (TensorProto.FLOAT16, "FP16", ["b", 3], [1, 3], [0.5, -1.25, 65504.0], [0.5, -1.25, 65504.0]),
        (TensorProto.STRING, "BYTES", ["b"], [2], ["héllo", ""], ["héllo", ""]),
        (TensorProto.BOOL, "BOOL", ["b", 2], [2, 2], [True, False, False, True], [True, False, False, True]),
        (TensorProto.UINT8, "UINT8", ["b", 2], [1, 2], [0, 255], [0, 255]),
        (TensorProto.DOUBLE, "FP64", ["b"], [2], [1e-300, 2.5], [1e-300, 2.5]),
    ],
)
async def test_datatypes_round_trip(
    make_client: MakeClient, tmp_path: Path, elem_type: int, datatype: str, dims: list, shape: list,
    data: list, expected: list,
) -> None:  # fmt: skip
    client, _ = await make_client(models.identity(tmp_path / "id.onnx", elem_type, dims))
    response = await client.post("/v2/models/m/infer", json={"inputs": [tensor("x", shape, datatype, data)]})
    assert response.status == 200, await response.text()
    (out,) = (await response.json())["outputs"]
    assert out == {"name": "y", "datatype": datatype, "shape": shape, "data": expected}


async def test_client_mistakes_get_json_errors_never_500(make_client: MakeClient, tmp_path: Path) -> None:
    client, context = await make_client(models.mixed(tmp_path / "mixed.onnx"), max_request_bytes=4096)
    good_n = tensor("n", [1, 4], "INT64", [1, 2, 3, 4])
    infer = "/v2/models/m/infer"
    big = {"inputs": [tensor("a", [9, 4], "FP32", [0] * 36), tensor("n", [9, 4], "INT64", [0] * 36)]}
    cases = [
        ("post", "/v2/models/other/infer", {"inputs": []}, 404, "unknown model"),
        ("post", "/v2/models/m/versions/2/infer", {"inputs": []}, 404, "no version '2'"),
        ("get", "/v2/models/other", None, 404, "unknown model"),
        ("get", "/v2/models/m/infer", None, 405, "Method Not Allowed"),
        ("post", "/v2/models/m/infer", b"{not json", 400, "not valid JSON"),
        ("post", "/v2/models/m/infer", {"inputs": [good_n]}, 400, "missing input(s) 'a'"),
        ("post", infer, {"inputs": [tensor("a", [1, 4], "INT64", [0] * 4), good_n]}, 400, "does not match"),
        ("post", infer, {"inputs": [tensor("a", [1, 5], "FP32", [0] * 5), good_n]}, 400, "axis 1"),
        ("post", infer, big, 400, "exceeds"),
        ("post", infer, b'{"inputs": [' + b" " * 5000 + b"]}", 413, "Maximum request body size"),
    ]  # fmt: skip
    for method, path, payload, status, fragment in cases:
        if isinstance(payload, bytes):
            response = await client.request(
                method, path, data=payload, headers={"Content-Type": "application/json"}
            )
        else:
            response = await client.request(method, path, json=payload)
        assert response.status == status, (path, payload, await response.text())
        assert response.content_type == "application/json"
        assert fragment in (await response.json())["error"], (path, payload)
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert 'warmgate_modelserver_requests_total{code="400",model="m"} 5.0' in metrics
    assert context.metrics.in_flight._value.get() == 0


async def test_not_ready_and_draining_answer_503(make_client: MakeClient, tmp_path: Path) -> None:
    client, context = await make_client(models.mixed(tmp_path / "mixed.onnx"), ready=False)
    response = await client.get("/v2/health/ready")
    assert response.status == 503 and (await response.json())["reason"] == "model m is loading"
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/models/m/ready")).status == 503
    response = await client.post("/v2/models/m/infer", json={"inputs": []})
    assert response.status == 503 and "not ready" in (await response.json())["error"]
    context.state.ready = True
    assert (await client.get("/v2/health/ready")).status == 200
    context.state.draining = True
    response = await client.get("/v2/health/ready")
    assert response.status == 503 and (await response.json())["reason"] == "draining"


async def test_health_stays_responsive_while_a_long_batch_runs(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, context = await make_client(models.slow(tmp_path / "slow.onnx"))
    x = (np.eye(128, dtype=np.float32) * 0.5).ravel().tolist()

    async def infer(steps: int) -> float:
        started = time.perf_counter()
        request = {"inputs": [tensor("steps", [1], "INT64", [steps]), tensor("x", [128, 128], "FP32", x)]}
        response = await client.post("/v2/models/m/infer", json=request)
        assert response.status == 200
        return time.perf_counter() - started

    per_step = await infer(200) / 200
    batch = asyncio.ensure_future(infer(max(200, int(0.5 / per_step))))  # about half a second of compute
    deadline = time.monotonic() + 10
    while context.metrics.in_flight._value.get() == 0:
        assert time.monotonic() < deadline, "the batch never started"
        await asyncio.sleep(0.001)
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/metrics")).status == 200
    assert not batch.done()  # both answered while the batch was still running
    await batch
