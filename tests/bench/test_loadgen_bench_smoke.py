"""bench/loadgen_bench.py still runs: one short round of wrk and both generator clients against the
trivial endpoint (1 s each: wrk takes whole seconds), every request answered. Nothing here looks
at a rate; figures live in docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_loadgen_bench_one_round(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is required in CI: bash .ci/install-tools.sh")
        pytest.skip("wrk not installed (Debian: apt-get install wrk)")
    out = tmp_path / "loadgen.json"
    argv = [
        sys.executable,
        "bench/loadgen_bench.py",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = json.loads(out.read_text())
    [one] = result["rounds"]
    assert set(one) == {"wrk", "warmgate", "warmgate-aiohttp"}
    for tool, figures in one.items():
        assert figures["requests"] > 0 and figures["errors"] == 0, (tool, figures)
    assert "| trivial aiohttp endpoint | warmgate / wrk |" in proc.stdout
