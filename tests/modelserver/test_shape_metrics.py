"""The shapes the reference server serves, as a bounded Prometheus counter (metrics.py
`request_shapes_total`): batch size and per-input dims, a real ONNX model with a dynamic
sequence length, a real `warmgate serve` process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.modelserver import models
from tests.modelserver.procs import ServerProcess
from warmgate.modelserver.metrics import MAX_SHAPE_SERIES, ServerMetrics, shape_label

StartServer = Callable[..., ServerProcess]
pytestmark = pytest.mark.timeout(120)
SHAPES = "warmgate_modelserver_request_shapes_total"


def token_request(batch: int, length: int) -> dict[str, object]:
    ids = np.ones((batch, length), dtype=np.int64)
    return {
        "inputs": [
            {"name": name, "shape": [batch, length], "datatype": "INT64", "data": ids.ravel().tolist()}
            for name in ("input_ids", "attention_mask")
        ]
    }


async def shape_counts(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.labels["batch_size"], s.labels["dims"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == SHAPES
    }


async def test_the_served_shapes_are_counted_by_batch_size_and_dims(
    start_server: StartServer, tmp_path: Path
) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    server = start_server("--model", str(model), "--model-name", "tokens")
    url = server.wait_ready()
    sent = [(1, 8)] * 3 + [(2, 8)] * 2 + [(1, 16)]
    async with aiohttp.ClientSession() as session:
        for batch, length in sent:
            async with session.post(
                f"{url}/v2/models/tokens/infer", json=token_request(batch, length)
            ) as answer:
                assert answer.status == 200, await answer.text()
        # Both inputs' dims without the batch dimension, in input-name order.
        assert await shape_counts(session, url) == {("1", "8,8"): 3.0, ("2", "8,8"): 2.0, ("1", "16,16"): 1.0}


async def test_shapes_beyond_the_cap_are_folded_into_other(start_server: StartServer, tmp_path: Path) -> None:
    model = models.token_counter(tmp_path / "tokens.onnx")
    server = start_server("--model", str(model), "--model-name", "tokens")
    url = server.wait_ready()
    async with aiohttp.ClientSession() as session:
        for length in range(1, MAX_SHAPE_SERIES + 4):
            async with session.post(f"{url}/v2/models/tokens/infer", json=token_request(1, length)) as answer:
                assert answer.status == 200
        counts = await shape_counts(session, url)
    assert len(counts) == MAX_SHAPE_SERIES + 1
    assert counts[("other", "other")] == 3.0
    assert counts[("1", "1,1")] == 1.0


def test_labels_of_unbatched_models_and_long_dims() -> None:
    assert shape_label([("b", (4, 16)), ("a", (4, 3, 2))], batched=True) == (4, "3x2,16")
    assert shape_label([("x", (3, 2))], batched=False) == (0, "3x2")
    metrics = ServerMetrics(CollectorRegistry(), worker="1")
    metrics.count_shape("m", 1, "x" * 100)
    assert (
        metrics.registry.get_sample_value(SHAPES, {"model": "m", "batch_size": "other", "dims": "other"})
        == 1.0
    )
