"""Fixtures for the probe tests: real loopback servers on port 0, real state files."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.probe.fakes import FakeModelServer, make_config
from warmgate.config import Config
from warmgate.probe.app import Probe, ProbeSettings, build_probe, create_app
from warmgate.state import StateWriter

ProbeFactory = Callable[..., Awaitable[tuple[Probe, TestClient[Any, Any]]]]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def model_server(aiohttp_server: Any) -> AsyncIterator[FakeModelServer]:
    fake = FakeModelServer()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    if fake.hold is not None:
        fake.hold.set()  # let held requests finish before the server shuts down


@pytest.fixture
def config(state_dir: Path, model_server: FakeModelServer) -> Config:
    return make_config(state_dir, model_server.url)


@pytest.fixture
def writer(state_dir: Path) -> Iterator[StateWriter]:
    """The current instance's writer, with the directory prepared (phase starting)."""
    state = StateWriter(state_dir, server_url="http://127.0.0.1:8000", instance_id="current-instance")
    state.prepare()
    yield state
    state.close()


@pytest.fixture
def make_probe(aiohttp_client: Any) -> ProbeFactory:
    async def make(
        config: Config, clock: Callable[[], float] = time.monotonic
    ) -> tuple[Probe, TestClient[Any, Any]]:
        probe = build_probe(ProbeSettings.from_config(config), clock=clock)
        client = await aiohttp_client(create_app(probe))
        return probe, client

    return make
