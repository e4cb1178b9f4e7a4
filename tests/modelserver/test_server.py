"""`warmgate serve` as a real process on a loopback port: the demo, signals, workers, CLI errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime as ort
import psutil
import pytest

from tests.modelserver import gpu, models
from tests.modelserver.procs import REPO, ServerProcess
from warmgate.modelserver.app import WORKER_HEADER

StartServer = Callable[..., ServerProcess]
DEADLINE_S = 30.0


def demo_request(batch: int, seed: int = 0) -> tuple[np.ndarray, dict[str, object]]:
    x = np.random.default_rng(seed).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    return x, body


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_demo_serves_with_an_unwritable_home_and_reports_its_port(
    start_server: StartServer, tmp_path: Path
) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WARMGATE_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path / "tmp"))
    server = start_server("--demo", env=env, cache=False)
    url = server.wait_ready()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
    assert "model=demo runtime=onnx device=cpu providers=CPUExecutionProvider workers=1" in server.output
    # The model was generated into the temp-dir fallback.
    (generated,) = (tmp_path / "tmp").glob(f"warmgate-cache-{os.getuid()}/demo/*/demo.onnx")
    x, body = demo_request(2)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/demo/infer", json=body) as response:
            assert response.status == 200
            assert response.headers[WORKER_HEADER] == str(server.pid)
            (logits,) = (await response.json())["outputs"]
        assert logits["name"] == "logits" and logits["shape"] == [2, 10]
        want = ort.InferenceSession(str(generated)).run(None, {"input": x})[0]
        np.testing.assert_allclose(np.array(logits["data"]).reshape(2, 10), want, atol=1e-5)
        count = 'warmgate_modelserver_request_duration_seconds_count{batch_size="2",model="demo"}'
        assert await metric(session, url, count) == 1.0
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


async def test_torch_demo_with_in_process_warmup(start_server: StartServer, demo_onnx: Path) -> None:
    server = start_server(
        "--demo", "--runtime", "torch", "--warmup-batch-sizes", "1,2", "--warmup-count", "2"
    )
    url = server.wait_ready()
    assert "runtime=torch device=cpu" in server.output
    assert re.search(r"warmup batch 2: first [\d.]+ ms, steady [\d.]+ ms \(2 calls\)", server.output)
    x, body = demo_request(1, seed=3)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v2/models/demo/infer", json=body) as response:
            assert response.status == 200
            logits = np.array((await response.json())["outputs"][0]["data"]).reshape(1, 10)
        assert await metric(session, url, 'warmgate_modelserver_warmup_first_call_seconds{batch_size="2"') > 0
    want = ort.InferenceSession(str(demo_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, want, atol=1e-4)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


async def test_term_finishes_the_in_flight_request_then_exits_0(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server("--model", str(models.slow(tmp_path / "slow.onnx")), "--graceful-timeout", "30")
    url = server.wait_ready()
    x = (np.eye(128, dtype=np.float32) * 0.5).ravel().tolist()

    def body(steps: int) -> dict[str, object]:
        return {
            "inputs": [
                {"name": "steps", "shape": [1], "datatype": "INT64", "data": [steps]},
                {"name": "x", "shape": [128, 128], "datatype": "FP32", "data": x},
            ]
        }

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(f"{url}/v2/models/slow/infer", json=body(200)) as response:
            assert response.status == 200
        per_step = (time.perf_counter() - started) / 200
        # About two seconds of compute: long enough to signal the server and probe it meanwhile.
        in_flight = asyncio.ensure_future(
            session.post(f"{url}/v2/models/slow/infer", json=body(int(2 / per_step)))
        )
        deadline = time.monotonic() + DEADLINE_S
        while await metric(session, url, "warmgate_modelserver_in_flight_requests") < 1:
            assert time.monotonic() < deadline and not in_flight.done()
        server.signal(signal.SIGTERM)
        # The listener closes at once: new connections are refused while the old request runs on.
        while True:
            try:
                async with aiohttp.ClientSession() as probe, probe.get(f"{url}/v2/health/live"):
                    pass
            except aiohttp.ClientConnectorError:
                break
            assert time.monotonic() < deadline
        assert not in_flight.done()
        response = await in_flight
        assert response.status == 200
        assert (await response.json())["outputs"][0]["shape"] == [128, 128]
        response.release()
    assert server.wait() == 0
    assert "stopped (drained in" in server.output


async def test_every_worker_serves_and_a_crashed_worker_is_replaced(start_server: StartServer) -> None:
    server = start_server("--demo", "--workers", "2")
    url = server.wait_ready()
    assert "workers=2" in server.output
    parent = psutil.Process(server.pid)
    workers = {str(child.pid) for child in parent.children()}
    assert len(workers) == 2

    async def answering_workers(count: int) -> set[str]:
        seen: set[str] = set()
        # A fresh connection per request: SO_REUSEPORT spreads connections, not requests.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(count):
                async with session.post(f"{url}/v2/models/demo/infer", json=demo_request(1)[1]) as response:
                    assert response.status == 200
                    seen.add(response.headers[WORKER_HEADER])
        return seen

    assert await answering_workers(24) == workers
    victim = sorted(workers)[0]
    os.kill(int(victim), signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        current = {str(child.pid) for child in parent.children()}
        async with aiohttp.ClientSession() as session, session.get(f"{url}/v2/health/ready") as response:
            ready = response.status == 200
        if len(current) == 2 and victim not in current and ready:
            break
        assert time.monotonic() < deadline, server.output
        await asyncio.sleep(0.05)  # poll interval, not synchronisation
    assert await answering_workers(24) == current
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE


async def test_torch_workers_share_weights_loaded_before_fork(start_server: StartServer) -> None:
    server = start_server("--demo", "--runtime", "torch", "--workers", "2")
    url = server.wait_ready()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        seen = set()
        for _ in range(16):
            async with session.post(f"{url}/v2/models/demo/infer", json=demo_request(2)[1]) as response:
                assert response.status == 200
                seen.add(response.headers[WORKER_HEADER])
    assert len(seen) == 2
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["onnx", "torch"])
async def test_cuda_workers_initialise_after_fork_and_match_cpu(
    start_server: StartServer, demo_onnx: Path, runtime: str
) -> None:
    gpu.require_ort_cuda() if runtime == "onnx" else gpu.require_torch_cuda()
    server = start_server(
        "--demo", "--runtime", runtime, "--device", "cuda", "--require-gpu", "--workers", "2"
    )
    url = server.wait_ready()
    assert "device=cuda:0" in server.output
    x, body = demo_request(4, seed=7)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v2/models/demo/infer", json=body) as response,
    ):
        assert response.status == 200
        logits = np.array((await response.json())["outputs"][0]["data"]).reshape(4, 10)
    want = ort.InferenceSession(str(demo_onnx)).run(None, {"input": x})[0]
    np.testing.assert_allclose(logits, want, atol=1e-3, rtol=1e-3)
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", "serve", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "/nonexistent/model.onnx"], "--model /nonexistent/model.onnx: no such file"),
        (["--demo", "--runtime", "tensorflow"], "invalid choice: 'tensorflow'"),
        (["--demo", "--device", "gpu0"], "--device: device must be auto, cpu, cuda or cuda:N, got 'gpu0'"),
        (["--demo", "--workers", "0"], "--workers: must be >= 1, got 0"),
        (["--demo", "--providers", "cuda,tpu"], "--providers: unknown provider 'tpu'"),
    ],
)
def test_bad_command_lines_exit_2_with_one_line(args: list[str], fragment: str, tmp_path: Path) -> None:
    result = run_serve(*args, "--cache-dir", str(tmp_path))
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unloadable_model_exits_2_without_a_traceback(workers: str, tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"definitely not onnx")
    result = run_serve(
        "--model", str(model), "--port", "0", "--workers", workers, "--cache-dir", str(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert f"{model}: ONNX Runtime cannot load the model" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stdout
