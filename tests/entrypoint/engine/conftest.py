"""Engine tests: real loopback servers (pytest-aiohttp) and a real client session; no mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.entrypoint.engine.fakeserver import Behaviour, make_app
from warmgate.config import Config, validate_config
from warmgate.entrypoint.engine.prover import Engine, Tuning
from warmgate.state import Report, StateWriter

# Tests shrink every wait: progress written often, no long waits for a reaper that is not there.
FAST = Tuning(
    progress_interval_s=0.05,
    log_interval_s=0.5,
    server_exit_wait_s=0.5,
    exit_grace_s=0.05,
    readiness_interval_s=0.05,
    post_warm_gap_s=0.005,
)


def shape(
    name: str, batch: int, *, count: int = 3, dims: tuple[int, ...] = (4,), **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "batch_size": batch,
        "inputs": {"input": {"datatype": "FP32", "dims": list(dims), "data": "random"}},
        "count": count,
        **extra,
    }


def engine_config(url: str, state_dir: Path, **sections: Any) -> Config:
    """A small, fast config: short load test, quick timeouts, no memory limit from the host."""
    raw: dict[str, Any] = {
        "server": {"url": url, "protocol": "oip", "model": "demo", "request_timeout_s": 2},
        "shapes": [shape("bs1", 1), shape("bs4", 4)],
        "load_test": {"duration_s": 0.3, "concurrency": 4},
        "memory": {"sample_interval_s": 0.05},
        "state_dir": str(state_dir),
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(raw, "test.yaml", {})


ServerFactory = Callable[..., Awaitable[tuple[str, Behaviour]]]


@pytest.fixture
async def oip_server(aiohttp_server: Any) -> ServerFactory:
    """Start a fake OIP server with the given behaviour; returns (base URL, behaviour)."""

    async def start(**behaviour: Any) -> tuple[str, Behaviour]:
        state = Behaviour(**behaviour)
        server = await aiohttp_server(make_app(state))
        return str(server.make_url("")).rstrip("/"), state

    return start


@pytest.fixture
async def serve_app(aiohttp_server: Any) -> Callable[[web.Application], Awaitable[str]]:
    async def start(app: web.Application) -> str:
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def prove(session: aiohttp.ClientSession, tmp_path: Path) -> Callable[..., Awaitable[Report]]:
    """Run the engine over a config; no server process (memory sampling off, no GPU)."""

    async def run(config: Config, **engine: Any) -> Report:
        state = StateWriter(config.state_dir)
        state.prepare()
        engine.setdefault("tuning", FAST)
        engine.setdefault("gpu_reader", list)
        engine.setdefault("memory_limit", lambda: (None, ""))
        return await Engine(config, session, state, **engine).prove()

    return run
