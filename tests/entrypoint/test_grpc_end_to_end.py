"""`warmgate run --once` with protocol oip-grpc against the reference server, `warmgate serve --demo
--grpc-port`, real processes and the real model: the server answers gRPC "not ready" while its
model loads and "ready" after, the shapes come from ModelMetadata (`shapes: auto`), the warmup,
load test, concurrency check and gate run over gRPC, and the marker is written."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port
from warmgate import exitcodes
from warmgate.config import ServerConfig
from warmgate.protocols import make_adapter

PY = sys.executable
ONNXRUNTIME_MISSING = importlib.util.find_spec("onnxruntime") is None


async def readiness_seen(url: str, deadline_s: float) -> list[str | None]:
    """Every distinct answer of the adapter's readiness check, polled from before the server
    listens until it says ready (or the deadline passes)."""
    adapter = make_adapter(ServerConfig.model_validate({"url": url, "protocol": "oip-grpc", "model": "demo"}))
    seen: list[str | None] = []
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            reason = await adapter.check_ready(None, 1.0)  # type: ignore[arg-type]
            if not seen or seen[-1] != reason:
                seen.append(reason)
            if reason is None:
                break
            await asyncio.sleep(0.01)
    finally:
        await adapter.aclose()
    return seen


@pytest.mark.skipif(ONNXRUNTIME_MISSING, reason="warmgate serve --demo needs onnxruntime")
@pytest.mark.timeout(150)
def test_the_demo_server_is_gated_over_grpc(start_warmgate: Callable[..., Proc], tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    url = f"grpc://127.0.0.1:{grpc_port}"
    server = [
        PY, "-m", "warmgate", "serve", "--demo", "--port", str(http_port), "--grpc-port", str(grpc_port),
        "--cache-dir", str(tmp_path),
        # The worker warms itself before it says ready: a loading window long enough to be seen.
        "--warmup-batch-sizes", "1,4", "--warmup-count", "5",
    ]  # fmt: skip
    proc = start_warmgate(
        server,
        port=http_port,
        once=True,
        server={
            "url": url,
            "protocol": "oip-grpc",
            "model": "demo",
            "health_path": None,
            "http": None,
            "request_timeout_s": 30,
            "start_timeout_s": 90,
        },
        shapes="auto",
        auto_shapes={"batch_sizes": [1, 4], "count": 3},
        load_test={"enabled": True, "duration_s": 2.0, "concurrency": 2},
        # Half the load test compared with the golden answers, so even a slow machine checks some.
        concurrency_check={"fraction": 0.5},
        # Warmth is not what this test is about: a loaded CI machine must not fail it.
        gate={"max_first_to_steady_ratio": None},
    )
    seen = asyncio.run(readiness_seen(url, 90))
    assert proc.wait(timeout=120) == exitcodes.OK, proc.output

    # Before the model loaded the server answered, and said not ready; then ready.
    assert seen[-1] is None, seen
    answered_not_ready = [r for r in seen if r is not None and r.endswith(": not ready")]
    assert answered_not_ready, seen
    assert all(r.startswith((f"{url} ServerReady", f"{url} ModelReady(demo)")) for r in answered_not_ready)

    report = json.loads((tmp_path / "state" / "ready.json").read_text())
    assert report["gate"]["passed"], report["gate"]
    assert report["protocol"] == "oip-grpc" and report["server_url"] == url
    shapes = {s["name"]: s for s in report["shapes"]}
    assert sorted(shapes) == ["auto-bs1", "auto-bs4"]  # from ModelMetadata
    assert report["load_test"]["requests"] > 0 and report["load_test"]["errors"] == {}
    checks = [s["concurrency_check"] for s in shapes.values()]
    assert sum(c["checked"] for c in checks) > 0 and all(c["mismatches"] == 0 for c in checks), checks
    assert all(s["errors"] == 0 and s["error"] == "" for s in shapes.values())
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["health_url"] == f"{url} (ServerReady, ModelReady demo)"
