"""Traffic whose shape was never warmed (probe/shapes.py): the server's shape counter against the
report's warmed set, exported as a bounded counter and logged once per shape. Against a loopback
page a test controls, and against a real `warmgate serve` with a real ONNX model."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.modelserver import models
from tests.modelserver.procs import ServerProcess
from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import FakeModelServer, full_report, make_config
from tests.probe.test_probe_metrics import promtool
from warmgate.probe.shapes import MAX_SHAPES
from warmgate.state import Diagnosis, Phase, StateWriter, WarmedShape

pytestmark = pytest.mark.timeout(90)
UNWARMED = "warmgate_unwarmed_shape_requests_total"


def server_page(counts: dict[tuple[str, str], int]) -> str:
    lines = [
        "# HELP warmgate_modelserver_request_shapes_total Inference requests served, by shape.",
        "# TYPE warmgate_modelserver_request_shapes_total counter",
    ]
    lines += [
        f'warmgate_modelserver_request_shapes_total{{model="demo",batch_size="{b}",dims="{d}"}} {n}'
        for (b, d), n in counts.items()
    ]
    return "\n".join(lines) + "\n"


def make_ready(writer: StateWriter, warmed: list[tuple[int, str]] | None) -> None:
    diagnosis = (
        None if warmed is None else Diagnosis(warmed=[WarmedShape(batch_size=b, dims=d) for b, d in warmed])
    )
    writer.set_phase(Phase.LOAD_TESTING, "load test")
    writer.write_ready(full_report(writer.instance_id, diagnosis=diagnosis))
    writer.set_phase(Phase.READY, "all checks passed")


async def unwarmed(client: Any) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return {
        s.labels["shape"]: s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
        if s.name == UNWARMED
    }


@pytest.fixture
async def metrics_server(aiohttp_server: Any) -> tuple[str, dict[str, str]]:
    """The fake model server's health surface plus a /metrics page the test sets."""
    page = {"text": ""}
    fake = FakeModelServer()
    app = fake.app()

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=page["text"], content_type="text/plain")

    app.router.add_get("/metrics", metrics)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), page


async def test_unwarmed_shapes_are_counted_and_logged_once(
    metrics_server: tuple[str, dict[str, str]],
    writer: StateWriter,
    state_dir: Path,
    make_probe: ProbeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, page = metrics_server
    page["text"] = server_page({("1", "4"): 50, ("8", "4"): 7, ("1", "512"): 2, ("other", "other"): 3})
    make_ready(writer, [(1, "4"), (4, "4")])
    _, client = await make_probe(make_config(state_dir, url))
    with caplog.at_level(logging.WARNING, logger="warmgate.probe"):
        first = await unwarmed(client)
        second = await unwarmed(client)
    # bs1 was warmed: not counted. The server's own "other" cannot be judged shape by shape.
    assert first == {"bs8 dims 4": 7.0, "bs1 dims 512": 2.0, "other": 3.0}
    assert second == first
    logged = [r.getMessage() for r in caplog.records if "no warmup request had" in r.getMessage()]
    assert len(logged) == 2 and any("bs8 dims 4" in line for line in logged)


async def test_a_fully_warmed_server_exports_other_at_zero(
    metrics_server: tuple[str, dict[str, str]], writer: StateWriter, state_dir: Path, make_probe: ProbeFactory
) -> None:
    url, page = metrics_server
    page["text"] = server_page({("1", "4"): 50, ("4", "4"): 9})
    make_ready(writer, [(1, "4"), (4, "4")])
    _, client = await make_probe(make_config(state_dir, url))
    assert await unwarmed(client) == {"other": 0.0}


async def test_the_labels_are_bounded(
    metrics_server: tuple[str, dict[str, str]], writer: StateWriter, state_dir: Path, make_probe: ProbeFactory
) -> None:
    url, page = metrics_server
    page["text"] = server_page({("1", str(length)): 1 for length in range(1, MAX_SHAPES + 6)})
    make_ready(writer, [])
    _, client = await make_probe(make_config(state_dir, url))
    counts = await unwarmed(client)
    assert len(counts) == MAX_SHAPES + 1 and counts["other"] == 5.0


async def test_nothing_to_judge_exports_nothing(
    metrics_server: tuple[str, dict[str, str]], writer: StateWriter, state_dir: Path, make_probe: ProbeFactory
) -> None:
    url, page = metrics_server
    page["text"] = server_page({("8", "4"): 7})
    _, client = await make_probe(make_config(state_dir, url))
    assert await unwarmed(client) == {}  # no ready marker yet
    make_ready(writer, None)
    assert await unwarmed(client) == {}  # a report written before the warmed set was recorded


async def test_a_server_without_the_shape_counter_exports_nothing(
    metrics_server: tuple[str, dict[str, str]], writer: StateWriter, state_dir: Path, make_probe: ProbeFactory
) -> None:
    url, page = metrics_server
    page["text"] = '# TYPE nv_inference_count counter\nnv_inference_count{model="demo"} 4\n'
    make_ready(writer, [(1, "4")])
    _, client = await make_probe(make_config(state_dir, url))
    assert await unwarmed(client) == {}


async def test_against_the_reference_server(
    writer: StateWriter, state_dir: Path, make_probe: ProbeFactory, tmp_path: Path
) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    server = ServerProcess(
        ["--model", str(model), "--model-name", "tokens", "--port", "0", "--cache-dir", str(tmp_path)]
    )
    try:
        url = server.wait_ready()
        async with aiohttp.ClientSession() as session:
            for batch, length in [(1, 8), (1, 8), (3, 8), (1, 64)]:
                ids = np.ones((batch, length), dtype=np.int64).ravel().tolist()
                body = {
                    "inputs": [
                        {"name": name, "shape": [batch, length], "datatype": "INT64", "data": ids}
                        for name in ("input_ids", "attention_mask")
                    ]
                }
                async with session.post(f"{url}/v2/models/tokens/infer", json=body) as answer:
                    assert answer.status == 200
        make_ready(writer, [(1, "8,8")])
        _, client = await make_probe(make_config(state_dir, url))
        assert await unwarmed(client) == {"bs3 dims 8,8": 1.0, "bs1 dims 64,64": 1.0, "other": 0.0}
    finally:
        server.close()


async def test_the_exposition_with_unwarmed_shapes_passes_promtool(
    metrics_server: tuple[str, dict[str, str]], writer: StateWriter, state_dir: Path, make_probe: ProbeFactory
) -> None:
    tool = promtool()
    url, page = metrics_server
    page["text"] = server_page({("8", "4"): 7, ("other", "other"): 1})
    make_ready(writer, [(1, "4")])
    _, client = await make_probe(make_config(state_dir, url))
    response = await client.get("/metrics")
    text = await response.text()
    assert f'{UNWARMED}{{shape="bs8 dims 4"}} 7.0' in text
    result = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
