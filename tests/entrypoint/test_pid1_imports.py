"""PID 1 must never import torch or a CUDA runtime: a CUDA context there breaks forked server
workers and wastes GPU memory. Checked on a real run of the whole pipeline against the demo server."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env

FORBIDDEN = ("torch", "onnxruntime", "tensorrt", "cupy", "pycuda", "jax", "tensorflow")


def test_warmgate_run_imports_no_ml_runtime(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "server": {"url": f"http://127.0.0.1:{port}", "model": "demo"},
        "shapes": [{"name": "bs2", "batch_size": 2, "count": 2, "inputs": {"input": {"dims": [3, 64, 64]}}}],
        "load_test": {"duration_s": 0.3, "concurrency": 1},
        "gate": {"max_first_to_steady_ratio": None},
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    server = [
        sys.executable,
        "-m",
        "warmgate",
        "serve",
        "--demo",
        "--port",
        str(port),
        "--cache-dir",
        str(tmp_path),
    ]
    # -X importtime lists every module this interpreter (warmgate, not its server) imports.
    proc = Proc(
        [sys.executable, "-X", "importtime", *WARMGATE[1:], "run", "-c", str(path), "--once", "--", *server],
        env=warmgate_env(),
    )
    try:
        assert proc.wait(timeout=100) == 0, proc.output
    finally:
        proc.close()
    imported = {line.split("|")[-1].strip() for line in proc.lines if line.startswith("import time:")}
    assert "warmgate.entrypoint.engine.prover" in imported, (
        "the check must cover the engine, not just the CLI"
    )
    leaked = sorted(name for name in imported if name.split(".")[0] in FORBIDDEN)
    assert not leaked, f"PID 1 imported {leaked}"
