"""Fixtures for the probe tests: real loopback servers on port 0, real state files."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.probe.fakes import FakeModelServer, make_config, probe_parts
from warmgate.config import Config
from warmgate.probe.app import Probe, build_probe, create_app
from warmgate.probe.http_guard import HttpLimits
from warmgate.state import StateWriter


class ProbeClient:
    """An aiohttp client for one probe server on a loopback port; each answer is read whole
    (so .json() and .text() work after the call) and its connection released."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        async with self.session.request(method, self.base + path, **kwargs) as response:
            await response.read()
            return response

    async def get(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.request("GET", path, **kwargs)


ProbeFactory = Callable[..., Awaitable[tuple[Probe, ProbeClient]]]


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
async def make_probe() -> AsyncIterator[ProbeFactory]:
    """Builds a probe and serves it on 127.0.0.1, port 0, with the default limits."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(config: Config, clock: Callable[[], float] = time.monotonic) -> tuple[Probe, ProbeClient]:
        probe = build_probe(*probe_parts(config), clock=clock)
        app = create_app(probe)
        cleanups.append(app.close)
        server = app.server(HttpLimits(), logging.getLogger("warmgate.probe.http"))
        cleanups.append(server.close)
        (host, port), *_ = await server.start("127.0.0.1", 0)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        cleanups.append(session.close)
        return probe, ProbeClient(session, f"http://{host}:{port}")

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()
