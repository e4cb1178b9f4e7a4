"""bench/llm_gate_effect.py still runs: with --smoke (one start, two prompt lengths, short load tests)
it completes and writes its result structure. Nothing here looks at a timing; the figures live in
docs/benchmarks.md. Needs the real LLM server (.tools/llm-venv): skipped without it, failed under CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tinyllm import require_llm_venv

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.mark.timeout(420)
def test_llm_gate_effect_smoke(tmp_path: Path) -> None:
    require_llm_venv()
    out = tmp_path / "llm_gate_effect.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "llm_gate_effect.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    document = json.loads(out.read_text())
    assert set(document["machine"]) >= {"nproc", "cpu", "memory_gib", "date"}

    records = document["gate"]["records"]
    assert [r["condition"] for r in records] == ["a", "b"]
    for record in records:
        assert "error" not in record and "gate_failed" not in record, record
        assert record["time_to_ready_s"] > 0
        assert set(record["shapes"]) == {"chat-64", "chat-256"}
        for shape in record["shapes"].values():
            assert shape["first_status"] == 200 and shape["steady_errors"] == 0
            assert shape["first_ttft_ms"] > 0 and shape["steady_ttft_p50_ms"] > 0
            # The server's own count, near the target (the bench's prompts are one token a word).
            assert abs(shape["prompt_tokens"] - shape["target_tokens"]) <= shape["target_tokens"] * 0.25
    assert "warming" in records[1]["warmgate_phases_s"]
    assert [row["shape"] for row in document["gate"]["summary"]] == ["chat-64", "chat-256"]

    overhead = document["overhead"]
    assert "error" not in overhead, overhead
    short, long = overhead["runs"]
    assert short["exit_code"] == 0 and long["exit_code"] == 0
    assert 0 < short["tokens"] < long["tokens"]
    assert overhead["warmgate_cpu_s_per_1k_tokens"] > 0
    assert overhead["bare"]["tokens"] > 0 and overhead["bare"]["cpu_s_per_1k_tokens"] > 0
