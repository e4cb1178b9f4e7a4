"""HTTP binary tensors against `warmgate serve --demo`, real processes and the real model: one
answer decoded as binary, and `warmgate run --once` (warmup, load test, concurrency check, gate)
with `server.binary_tensors: true`."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.procs import Proc, free_port
from warmgate import exitcodes
from warmgate.config import ServerConfig, Shape
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import make_adapter, validate
from warmgate.protocols.oip import INFERENCE_HEADER

PY = sys.executable
DEMO_INPUT = {"input": {"datatype": "FP32", "dims": [3, 64, 64], "data": "random"}}
ONNXRUNTIME_MISSING = importlib.util.find_spec("onnxruntime") is None


def binary_payload_bytes(batch: int) -> int:
    """The request the engine sends for the demo input: its JSON header, then the raw floats."""
    raw = batch * 3 * 64 * 64 * 4
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [batch, 3, 64, 64],
                "datatype": "FP32",
                "parameters": {"binary_data_size": raw},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    return len(json.dumps(header, separators=(",", ":"))) + raw


@pytest.mark.skipif(ONNXRUNTIME_MISSING, reason="warmgate serve --demo needs onnxruntime")
@pytest.mark.timeout(90)
async def test_the_demo_server_answers_binary_requests_in_binary(tmp_path: Path) -> None:
    argv = [PY, "-m", "warmgate", "serve", "--demo", "--host", "127.0.0.1", "--port", "0",
            "--cache-dir", str(tmp_path)]  # fmt: skip
    server = Proc(argv)
    try:
        ready = re.search(r"ready: (http://\S+)", server.expect("warmgate modelserver ready:", timeout=80))
        assert ready is not None
        config = {"url": ready.group(1), "protocol": "oip", "model": "demo", "binary_tensors": True}
        adapter = make_adapter(ServerConfig.model_validate(config))
        shape = Shape.model_validate({"name": "bs2", "batch_size": 2, "inputs": DEMO_INPUT})
        async with aiohttp.ClientSession() as session:
            request = adapter.build(build_inputs(shape), 2)
            result = await adapter.send(session, request, aiohttp.ClientTimeout(total=30))
        assert result.ok, result.message
        assert INFERENCE_HEADER in result.headers, "the server answered JSON, not binary"
        assert int(result.headers[INFERENCE_HEADER]) < len(result.body)
        checked, outputs = validate(adapter, result)
        assert checked.ok and outputs is not None, checked.message
        (logits,) = outputs.values()
        assert logits.datatype == "FP32" and logits.shape is not None and logits.shape[0] == 2
        assert len(logits.data) == 2 * logits.shape[1] and all(isinstance(v, float) for v in logits.data)
    finally:
        server.close()


@pytest.mark.skipif(ONNXRUNTIME_MISSING, reason="warmgate serve --demo needs onnxruntime")
@pytest.mark.timeout(120)
def test_the_demo_server_is_gated_over_binary_tensors(
    start_warmgate: Callable[..., Proc], tmp_path: Path
) -> None:
    port = free_port()
    server = [PY, "-m", "warmgate", "serve", "--demo", "--port", str(port), "--cache-dir", str(tmp_path)]
    proc = start_warmgate(
        server,
        port=port,
        once=True,
        server={
            "protocol": "oip",
            "model": "demo",
            "health_path": None,
            "http": None,
            "binary_tensors": True,
            "request_timeout_s": 30,
        },
        shapes=[
            {"name": "bs1", "batch_size": 1, "inputs": DEMO_INPUT, "count": 3},
            {"name": "bs4", "batch_size": 4, "inputs": DEMO_INPUT, "count": 3},
        ],
        load_test={"enabled": True, "duration_s": 2.0, "concurrency": 2},
        # Half the load test compared with the golden answers, so even a slow machine checks some.
        concurrency_check={"fraction": 0.5},
        # Warmth is not what this test is about: a loaded CI machine must not fail it.
        gate={"max_first_to_steady_ratio": None},
    )
    assert proc.wait(timeout=110) == exitcodes.OK, proc.output
    report = json.loads((tmp_path / "state" / "ready.json").read_text())
    assert report["gate"]["passed"], report["gate"]
    shapes = {s["name"]: s for s in report["shapes"]}
    # The requests were binary (a JSON body of these floats is several times larger) ...
    assert shapes["bs1"]["payload_bytes"] == binary_payload_bytes(1)
    assert shapes["bs4"]["payload_bytes"] == binary_payload_bytes(4)
    # ... every one was answered and decoded, and answers under load matched the golden ones.
    assert report["load_test"]["requests"] > 0 and report["load_test"]["errors"] == {}
    checks = [s["concurrency_check"] for s in shapes.values()]
    assert sum(c["checked"] for c in checks) > 0 and all(c["mismatches"] == 0 for c in checks), checks
    assert all(s["errors"] == 0 and s["error"] == "" for s in shapes.values())
