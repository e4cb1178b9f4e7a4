from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.modelserver.procs import ServerProcess


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: the demo model is generated once, not per test."""
    return tmp_path_factory.mktemp("warmgate-cache")


@pytest.fixture(scope="session")
def demo_onnx(cache_dir: Path) -> Path:
    from warmgate.modelserver import demo

    return demo.ensure_onnx(cache_dir)


@pytest.fixture
def start_server(cache_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `warmgate serve ARGS --port 0 [--cache-dir <session cache>]`; killed at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, cache: bool = True) -> ServerProcess:
        extra = ["--port", "0", "--host", "127.0.0.1"] + (["--cache-dir", str(cache_dir)] if cache else [])
        server = ServerProcess([*args, *extra], env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
