"""The reference server's start-up trace (trace.py, GET /v2/warmgate/startup) on a real
`warmgate serve` process with a real ONNX model and tokenizer, and merged into warmgate's report
by the engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.entrypoint.engine.conftest import FAST, engine_config
from tests.modelserver import models
from tests.modelserver.procs import ServerProcess
from warmgate.entrypoint.engine.prover import Engine
from warmgate.entrypoint.report import format_report
from warmgate.modelserver.trace import MAX_FIRST_INFERENCES, StartupTrace, startup_step
from warmgate.state import StateWriter

StartServer = Callable[..., ServerProcess]
pytestmark = pytest.mark.timeout(120)


async def startup(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/v2/warmgate/startup") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def test_the_trace_names_load_tokenizer_warmup_and_first_inferences(
    start_server: StartServer, tmp_path: Path
) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    tokenizer = models.word_tokenizer(tmp_path / "tokenizer.json")
    server = start_server(
        "--model", str(model), "--model-name", "tokens", "--tokenizer", str(tokenizer),
        "--warmup-batch-sizes", "1,2", "--warmup-count", "2",
    )  # fmt: skip
    url = server.wait_ready()
    body = {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["hello warm world"]}]}
    async with aiohttp.ClientSession() as session:
        before = await startup(session, url)
        for _ in range(3):
            async with session.post(f"{url}/v2/models/tokens/infer", json=body) as answer:
                assert answer.status == 200, await answer.text()
        after = await startup(session, url)
    assert before["schema_version"] == 1 and before["worker"]
    names = [step["name"] for step in before["steps"]]
    assert names == ["runtime load", "session build", "tokenizer load", "warmup bs1", "warmup bs2"]
    for step in before["steps"]:
        assert step["seconds"] >= 0
    # The warmup reports each batch size's first call once all are done: no start, only a duration.
    assert [step["started_s"] is None for step in before["steps"]] == [False, False, False, True, True]
    assert before["steps"][0]["started_s"] >= 0
    # The tokenizer loads inside the runtime load, which started first.
    load, session_build, tokenizer = before["steps"][:3]
    assert load["started_s"] <= session_build["started_s"] <= tokenizer["started_s"]
    assert load["started_s"] <= tokenizer["started_s"]
    assert tokenizer["started_s"] + tokenizer["seconds"] <= load["started_s"] + load["seconds"] + 1e-6
    # Three requests of one shape: one first inference.
    assert [step["name"] for step in after["steps"]][5:] == ["first inference bs1 dims 1"]


async def test_the_engine_merges_the_servers_trace_into_its_report(
    start_server: StartServer, tmp_path: Path
) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    server = start_server("--model", str(model), "--model-name", "tokens", "--warmup-batch-sizes", "1")
    url = server.wait_ready()
    shapes = [
        {
            "name": f"bs{batch}",
            "batch_size": batch,
            "inputs": {
                name: {"datatype": "INT64", "dims": [8], "data": "zero"}
                for name in ("input_ids", "attention_mask")
            },
            "count": 3,
        }
        for batch in (1, 2)
    ]
    config = engine_config(url, tmp_path / "state", shapes=shapes, server={"model": "tokens"})
    state = StateWriter(config.state_dir)
    state.prepare()
    async with aiohttp.ClientSession() as session:
        report = await Engine(
            config, session, state, tuning=FAST, gpu_reader=list, memory_limit=lambda: (None, "")
        ).prove()
    diagnosis = report.diagnosis
    assert diagnosis is not None
    assert diagnosis.startup_source == f"GET {url}/v2/warmgate/startup"
    names = [step.name for step in diagnosis.startup]
    assert names[:3] == ["runtime load", "session build", "warmup bs1"]
    assert "first inference bs1 dims 8,8" in names and "first inference bs2 dims 8,8" in names
    assert [(w.batch_size, w.dims) for w in diagnosis.warmed] == [(1, "8,8"), (2, "8,8")]
    assert "server start-up (GET http://" in format_report(report)


async def test_the_session_build_says_whether_the_optimised_model_came_from_the_cache(
    start_server: StartServer, tmp_path: Path
) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    cache = ("--cache-dir", str(tmp_path / "cache"))
    details = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            server = start_server("--model", str(model), "--model-name", "tokens", *cache, cache=False)
            steps = {step["name"]: step for step in (await startup(session, server.wait_ready()))["steps"]}
            details.append(steps["session build"]["detail"])
            server.close()
    assert details[0].startswith("graph optimisation"), details
    assert details[1].startswith("cached optimised model"), details


def test_first_inferences_are_bounded_and_steps_are_recorded_only_in_a_worker() -> None:
    ticks = iter(range(1000))
    trace = StartupTrace(worker="1", clock=lambda: float(next(ticks)), wall_clock=lambda: 0.0)
    for n in range(MAX_FIRST_INFERENCES + 5):
        trace.first_inference(f"bs{n}", 0.5)
        trace.first_inference(f"bs{n}", 0.5)
    assert len(trace.document()["steps"]) == MAX_FIRST_INFERENCES
    with startup_step("outside a worker"):
        pass
    with trace.active(), startup_step("weights read"):
        pass
    steps = trace.document()["steps"]
    assert steps[-1]["name"] == "weights read" and steps[-1]["started_s"] is not None
    assert len(trace.document()["steps"]) == MAX_FIRST_INFERENCES + 1


async def test_the_torch_runtime_names_its_weights_read(start_server: StartServer) -> None:
    server = start_server("--demo", "--runtime", "torch")
    url = server.wait_ready()
    async with aiohttp.ClientSession() as session:
        document = await startup(session, url)
    steps = {step["name"]: step for step in document["steps"]}
    assert list(steps)[:2] == ["runtime load", "weights read"]
    assert steps["weights read"]["detail"].endswith("onto cpu")
    assert steps["weights read"]["seconds"] <= steps["runtime load"]["seconds"]
