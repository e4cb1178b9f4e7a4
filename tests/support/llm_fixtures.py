"""pytest fixtures for the real LLM server (`transformers serve` on the tiny model of tinyllm.py).

Use them from a conftest.py, which makes them fixtures of that directory::

    from tests.support.llm_fixtures import llm_server, start_llm_server, tiny_llm_model  # noqa: F401

* `tiny_llm_model` (session): the model directory, built once per test session.
* `llm_server` (module): one running server shared by a module's tests (about 6 s to start on an
  idle 2-core machine, so not one per test); `.url`, `.model` (the id requests must name).
* `start_llm_server` (function): a factory for fresh servers, for tests that need a cold one or
  extra `transformers serve` flags; every server it started is stopped after the test.

All of them skip when `.tools/llm-venv` is missing, and fail instead under CI=true.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.tinyllm import TransformersServe, build_model, require_llm_venv

StartServer = Callable[..., TransformersServe]


@pytest.fixture(scope="session")
def tiny_llm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_llm_venv()
    return build_model(tmp_path_factory.mktemp("tinyllm") / "model")


@pytest.fixture(scope="module")
def llm_server(tiny_llm_model: Path) -> Iterator[TransformersServe]:
    with TransformersServe(tiny_llm_model) as server:
        yield server


@pytest.fixture
def start_llm_server(tiny_llm_model: Path) -> Iterator[StartServer]:
    started: list[TransformersServe] = []

    def start(*extra_args: str, threads: int | None = 1) -> TransformersServe:
        server = TransformersServe(tiny_llm_model, threads=threads, extra_args=extra_args)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()
