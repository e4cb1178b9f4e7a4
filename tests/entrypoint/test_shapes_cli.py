"""`warmgate shapes`: a shapes: section from the traffic a real `warmgate serve` counted, from a
JSON-lines request log, and an honest refusal of metrics that carry no shapes (Triton's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import yaml

from tests.modelserver import models
from tests.modelserver.procs import ServerProcess
from warmgate.config import validate_config
from warmgate.entrypoint.shapes import TrafficError, from_metrics

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def shapes_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", "shapes", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=os.environ.copy(),
    )


def loads_as_config(section: str) -> list[dict[str, object]]:
    shapes = yaml.safe_load(section)["shapes"]
    raw = {"server": {"url": "http://127.0.0.1:8000", "protocol": "oip", "model": "m"}, "shapes": shapes}
    validate_config(raw, "pasted", {})
    return list(shapes)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[ServerProcess]:
    model = models.token_counter(tmp_path / "tokens.onnx")
    server = ServerProcess(
        ["--model", str(model), "--model-name", "tokens", "--port", "0", "--cache-dir", str(tmp_path)]
    )
    try:
        yield server
    finally:
        server.close()


async def test_shapes_from_the_reference_servers_metrics(token_server: ServerProcess) -> None:
    url = token_server.wait_ready()
    traffic = [(1, 8)] * 90 + [(2, 8)] * 8 + [(1, 16), (4, 32)]
    async with aiohttp.ClientSession() as session:
        for batch, length in traffic:
            ids = np.ones((batch, length), dtype=np.int64).ravel().tolist()
            body = {
                "inputs": [
                    {"name": name, "shape": [batch, length], "datatype": "INT64", "data": ids}
                    for name in ("input_ids", "attention_mask")
                ]
            }
            async with session.post(f"{url}/v2/models/tokens/infer", json=body) as answer:
                assert answer.status == 200
    done = shapes_cli("--metrics", f"{url}/metrics", "--cover", "0.95")
    assert done.returncode == 0, done.stderr
    shapes = loads_as_config(done.stdout)
    assert [s["name"] for s in shapes] == ["bs1-8", "bs2-8"]
    first = shapes[0]
    assert first["batch_size"] == 1 and first["weight"] == pytest.approx(90 / 98, abs=1e-3)
    # Names and datatypes from the model's metadata.
    assert first["inputs"] == {
        "attention_mask": {"datatype": "INT64", "dims": [8], "data": "random"},
        "input_ids": {"datatype": "INT64", "dims": [8], "data": "random"},
    }
    assert "2 shapes cover 98.0% of 100 requests" in done.stderr
    assert "left out: bs1-16 (1.00%), bs4-32 (1.00%)" in done.stderr
    assert done.stdout.startswith("# 2 shapes cover 98.0%")


def test_shapes_from_a_request_log() -> None:
    lines = [
        {"inputs": [{"name": "x", "shape": [8, 3, 224, 224], "datatype": "FP16"}], "count": 700},
        {"inputs": [{"name": "x", "shape": [1, 3, 224, 224], "datatype": "FP16"}], "count": 299},
        {"inputs": [{"name": "x", "shape": [3, 3, 224, 224], "datatype": "FP16"}]},
    ]
    done = shapes_cli("--log", "-", "--cover", "0.99", stdin="\n".join(json.dumps(line) for line in lines))
    assert done.returncode == 0, done.stderr
    shapes = loads_as_config(done.stdout)
    assert [(s["name"], s["batch_size"]) for s in shapes] == [("bs8-3x224x224", 8), ("bs1-3x224x224", 1)]
    assert "left out: bs3-3x224x224 (0.10%)" in done.stderr


def test_a_bad_log_line_is_named() -> None:
    done = shapes_cli("--log", "-", stdin='{"inputs": [{"name": "x", "shape": [1, 2]}]}\nnot json\n')
    assert done.returncode == 1
    assert "line 2: not a request record" in done.stderr and done.stdout == ""
    assert 'expected {"inputs": [{"name"' in done.stderr, done.stderr


def test_tritons_metrics_carry_no_shapes() -> None:
    page = (
        "# HELP nv_inference_count Number of inferences performed\n"
        "# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="resnet",version="1"} 4200\n'
    )
    with pytest.raises(TrafficError, match="not the shapes of requests; give a request log"):
        from_metrics(page, None)


def test_the_servers_other_shapes_are_reported_as_left_out() -> None:
    page = (
        "# TYPE warmgate_modelserver_request_shapes counter\n"
        'warmgate_modelserver_request_shapes_total{model="m",batch_size="4",dims="16"} 95\n'
        'warmgate_modelserver_request_shapes_total{model="m",batch_size="other",dims="other"} 5\n'
    )
    from warmgate.entrypoint.shapes import propose

    counts, model = from_metrics(page, None)
    assert model == "m"
    _section, summary = propose(counts, 0.9, {"": "FP32"}, 5)
    assert "5.00% of requests had shapes beyond the server's label cap" in summary[-1]
