"""Fixtures for the protocol tests that need gRPC servers (grpcfake.py) or a TLS certificate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.protocols.grpcfake import FakeOip, adapter_for, start_grpc
from tests.support.tlscert import self_signed
from warmgate.protocols.oipgrpc import OipGrpcAdapter

Servers = Callable[..., Awaitable[int]]
Adapters = Callable[..., OipGrpcAdapter]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started: list[grpc.aio.Server] = []

    async def start(fake: FakeOip | None = None, **options: Any) -> int:
        server, port = await start_grpc(fake, **options)
        started.append(server)
        return port

    yield start
    for server in started:
        await server.stop(0)


@pytest.fixture
async def adapters() -> AsyncIterator[Adapters]:
    """Adapters whose channels are closed after the test."""
    made: list[OipGrpcAdapter] = []

    def make(url: str, **extra: Any) -> OipGrpcAdapter:
        made.append(adapter_for(url, **extra))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))
