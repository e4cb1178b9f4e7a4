"""Real processes for the sidecar's tests: `warmgate serve --demo` (a real ONNX model) on a port the
test chooses, so it can be killed and started again on the same port, and `warmgate sidecar`
beside it on a port of its own."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import WARMGATE, Proc, free_port, poll_until, warmgate_env

PY = sys.executable
DEMO_INPUT = {"input": {"datatype": "FP32", "dims": [3, 64, 64], "data": "random"}}
ONNXRUNTIME_MISSING = importlib.util.find_spec("onnxruntime") is None
needs_demo = pytest.mark.skipif(ONNXRUNTIME_MISSING, reason="warmgate serve --demo needs onnxruntime")
LISTENING = re.compile(r"probe listening on http://127\.0\.0\.1:(\d+)")


def get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one GET; a 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sidecar_config(path: Path, server_port: int, **sections: Any) -> Path:
    """The demo model, warmed and load-tested briefly; warmth itself is not judged (a loaded test
    machine must not fail a test about the sidecar's cycles)."""
    config: dict[str, Any] = {
        "server": {
            "url": f"http://127.0.0.1:{server_port}",
            "protocol": "oip",
            "model": "demo",
            "start_timeout_s": 60,
            "request_timeout_s": 30,
        },
        "shapes": [{"name": "bs1", "batch_size": 1, "inputs": DEMO_INPUT, "count": 3}],
        "load_test": {"enabled": True, "duration_s": 0.5, "concurrency": 2},
        "gate": {"max_first_to_steady_ratio": None},
        "state_dir": str(path.parent / "state"),
        "drain": {"quiet_period_s": 1.5, "grace_period_s": 5},
        "probe": {"check_cache_s": 0.1},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Sidecar:
    proc: Proc
    base: str
    state_dir: Path

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        return get(self.base + path, timeout)

    def status(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "status.json").read_text()))

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        poll_until(lambda: self.get("/readyz")[0] == 200, timeout=timeout, interval=0.1)
        return dict(json.loads((self.state_dir / "ready.json").read_text()))


@dataclass
class Servers:
    """Starts the demo server on one fixed port, again after it is killed."""

    port: int
    cache_dir: Path
    started: list[Proc]

    def start(self) -> Proc:
        argv = [PY, "-m", "warmgate", "serve", "--demo", "--host", "127.0.0.1", "--port", str(self.port),
                "--cache-dir", str(self.cache_dir)]  # fmt: skip
        proc = Proc(argv, env=warmgate_env())
        self.started.append(proc)
        proc.expect("warmgate modelserver ready:", timeout=60)
        return proc


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(free_port(), tmp_path / "cache", [])
    yield servers
    for proc in servers.started:
        proc.close()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Proc] = []

    def start(server_port: int, *extra: str, **sections: Any) -> Sidecar:
        config = sidecar_config(tmp_path / "warmup.yaml", server_port, **sections)
        argv = [*WARMGATE, "sidecar", "-c", str(config), "--host", "127.0.0.1", "--port", "0", *extra]
        proc = Proc(argv, env=warmgate_env())
        started.append(proc)
        match = LISTENING.search(proc.expect(lambda line: LISTENING.search(line) is not None, timeout=30))
        assert match is not None
        return Sidecar(proc, f"http://127.0.0.1:{match.group(1)}", tmp_path / "state")

    yield start
    for proc in started:
        proc.close()
