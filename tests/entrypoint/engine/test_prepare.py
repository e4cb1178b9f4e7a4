"""`Engine.prepare` builds every payload while the server is still loading, so the first attempt
sends at once when the server turns healthy (run.py runs prepare beside the health wait)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np

from tests.entrypoint.engine.conftest import FAST, ServerFactory, engine_config
from warmgate.entrypoint.engine.prover import Engine
from warmgate.state import StateWriter


def file_shape(path: Path) -> dict[str, object]:
    inputs = {"input": {"datatype": "FP32", "dims": [4], "data": "file", "file": str(path)}}
    return {"name": "from-file", "batch_size": 1, "count": 2, "inputs": inputs}


def make_engine(url: str, tmp_path: Path, session: aiohttp.ClientSession, data: Path) -> Engine:
    config = engine_config(url, tmp_path / "state", shapes=[file_shape(data)], load_test={"enabled": False})
    state = StateWriter(config.state_dir)
    state.prepare()
    return Engine(config, session, state, tuning=FAST, gpu_reader=list, memory_limit=lambda: (None, ""))


async def test_payloads_are_built_before_the_server_is_asked_anything(
    oip_server: ServerFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url, behaviour = await oip_server()
    data = tmp_path / "input.npy"
    np.save(data, np.arange(4, dtype=np.float32).reshape(1, 4))
    engine = make_engine(url, tmp_path, session, data)

    await engine.prepare()
    # The file is read in prepare: removing it now cannot matter, and nothing was sent yet.
    data.unlink()
    assert behaviour.total_calls == 0

    report = await engine.prove()
    assert report.gate.passed, report.gate.reason
    # 2 warmup requests, then the post-warm check's first request and its serial baseline.
    assert report.shapes[0].requests == 2 + 1 + FAST.post_warm_baseline


async def test_a_payload_error_found_in_prepare_fails_the_gate_in_prove(
    oip_server: ServerFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    url, _ = await oip_server()
    engine = make_engine(url, tmp_path, session, tmp_path / "missing.npy")
    await engine.prepare()  # a user's mistake is reported by the gate, never raised from here
    report = await engine.prove()
    assert not report.gate.passed
    assert "missing.npy" in report.gate.reason
