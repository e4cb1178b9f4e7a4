"""`warmgate bake` on real processes: it fills a cache that a later `warmgate run` uses, exports the
cache variables without overriding the user's, and says so when nothing was cached."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env, write_config
from warmgate.artifacts.environment import server_environment
from warmgate.exitcodes import CACHE_EMPTY

PY = sys.executable
# A third-party server in miniature: records its environment, leaves a compile artifact where the
# exported TORCHINDUCTOR_CACHE_DIR says, then serves "/" with 200.
FAKE_SERVER = """
import json, os, pathlib, sys
pathlib.Path(sys.argv[2]).write_text(json.dumps(dict(os.environ)))
if os.environ.get("TORCHINDUCTOR_CACHE_DIR") and sys.argv[3] == "write":
    kernels = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "fxgraph"
    kernels.mkdir(parents=True, exist_ok=True)
    (kernels / "graph.bin").write_bytes(b"compiled" * 100)
os.execv(sys.executable, [sys.executable, "-m", "http.server", sys.argv[1], "--bind", "127.0.0.1"])
"""


def cache_free_env(**extra: str) -> dict[str, str]:
    """warmgate_env without any cache variable: torch, imported by other tests in this process,
    sets TORCHINDUCTOR_CACHE_DIR in os.environ, which would count as the user's own setting."""
    env = {k: v for k, v in warmgate_env().items() if k not in server_environment(Path("/"), {})}
    return {**env, **extra}


def fake_server(tmp_path: Path, port: int, write: bool = True) -> list[str]:
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    return [PY, str(script), str(port), str(tmp_path / "server-env.json"), "write" if write else "none"]


def demo_config(path: Path, state_dir: Path, port: int, command: list[str]) -> Path:
    doc: dict[str, Any] = {
        "server": {
            "command": command,
            "url": f"http://127.0.0.1:{port}",
            "protocol": "oip",
            "model": "demo",
            "start_timeout_s": 90,
        },
        "shapes": [
            {
                "name": f"bs{bs}",
                "batch_size": bs,
                "inputs": {"input": {"datatype": "FP32", "dims": [3, 64, 64], "data": "random"}},
                "count": 3,
            }
            for bs in (1, 2)
        ],
        "load_test": {"duration_s": 1, "concurrency": 1},
        "gate": {"max_first_to_steady_ratio": None},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0, "grace_period_s": 10},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from warmgate.modelserver import demo

    return demo.ensure_onnx(tmp_path_factory.mktemp("demo"))


def test_bake_fills_a_cache_that_a_later_run_uses(tmp_path: Path, demo_onnx: Path) -> None:
    port, cache, state = free_port(), tmp_path / "cache", tmp_path / "state"
    # The server's cache dir comes from the exported WARMGATE_CACHE_DIR, not a flag.
    command = [PY, "-m", "warmgate", "serve", "--model", str(demo_onnx), "--port", str(port)]
    config = demo_config(tmp_path / "warmup.yaml", state, port, command)

    bake = Proc([*WARMGATE, "bake", "-c", str(config), "--cache-dir", str(cache)], env=warmgate_env())
    try:
        assert bake.wait(timeout=100) == 0, bake.output
    finally:
        bake.close()
    assert "cache: stored ort-optimized entry" in bake.output
    assert "bake: " in bake.output and "new: ort-optimized/demo-" in bake.output
    assert "load test off" in bake.output and "load-testing" not in bake.output
    assert not (state / "ready.json").exists()  # no marker where a probe could see it

    run = Proc(
        [*WARMGATE, "run", "--once", "-c", str(config)], env=warmgate_env(WARMGATE_CACHE_DIR=str(cache))
    )
    try:
        assert run.wait(timeout=100) == 0, run.output
    finally:
        run.close()
    assert "cache: hit ort-optimized entry demo-" in run.output
    assert "cache: stored" not in run.output and "WARNING cache" not in run.output


def test_bake_exports_cache_variables_and_keeps_the_users(tmp_path: Path) -> None:
    port, cache = free_port(), tmp_path / "cache"
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port)
    env = cache_free_env(WARMGATE_CACHE_DIR=str(cache), TRITON_CACHE_DIR=str(tmp_path / "mine"))
    bake = Proc([*WARMGATE, "bake", "-c", str(config), "--", *fake_server(tmp_path, port)], env=env)
    try:
        assert bake.wait(timeout=60) == 0, bake.output
    finally:
        bake.close()
    seen = json.loads((tmp_path / "server-env.json").read_text())
    assert seen["WARMGATE_CACHE_DIR"] == str(cache)
    assert seen["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "torchinductor")
    assert seen["CUDA_CACHE_PATH"] == str(cache / "cuda")
    assert seen["TRITON_CACHE_DIR"] == str(tmp_path / "mine")  # the user's setting wins
    assert "new: torchinductor" in bake.output


def test_run_exports_cache_variables_only_with_a_cache_dir(tmp_path: Path) -> None:
    port, cache = free_port(), tmp_path / "cache"
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port)
    argv = [*WARMGATE, "run", "--once", "-c", str(config), "--", *fake_server(tmp_path, port)]
    env = cache_free_env(WARMGATE_CACHE_DIR=str(cache), CUDA_CACHE_PATH="/users/own")
    run = Proc(argv, env=env)
    try:
        assert run.wait(timeout=60) == 0, run.output
    finally:
        run.close()
    seen = json.loads((tmp_path / "server-env.json").read_text())
    assert seen["TORCHINDUCTOR_CACHE_DIR"] == str(cache / "torchinductor")
    assert seen["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1"
    assert seen["CUDA_CACHE_PATH"] == "/users/own"

    run = Proc(argv, env=cache_free_env())
    try:
        assert run.wait(timeout=60) == 0, run.output
    finally:
        run.close()
    seen = json.loads((tmp_path / "server-env.json").read_text())
    assert "TORCHINDUCTOR_CACHE_DIR" not in seen and "WARMGATE_CACHE_DIR" not in seen


def test_bake_of_a_server_that_caches_nothing_exits_with_cache_empty(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", port)
    argv = [*WARMGATE, "bake", "-c", str(config), "--cache-dir", str(tmp_path / "cache")]
    bake = Proc([*argv, "--", *fake_server(tmp_path, port, write=False)], env=cache_free_env())
    try:
        assert bake.wait(timeout=60) == CACHE_EMPTY, bake.output
    finally:
        bake.close()
    assert "holds no artifacts after the warm run" in bake.output


def test_bake_without_a_cache_dir_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "warmup.yaml", tmp_path / "state", free_port())
    bake = Proc([*WARMGATE, "bake", "-c", str(config), "--", PY, "-c", "pass"], env=warmgate_env())
    try:
        assert bake.wait(timeout=30) == 2
    finally:
        bake.close()
    assert "bake needs a cache directory: --cache-dir or $WARMGATE_CACHE_DIR" in bake.output
