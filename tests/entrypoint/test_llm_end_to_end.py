"""`warmgate run` gating a real third-party LLM server: `transformers serve` (PyPI, CPU) on the tiny
model tests/support/tinyllm.py builds, with protocol openai, family transformers, two prompt
lengths, one streamed chat shape and one whole completion: ready, the marker written, and the
report's prompt lengths, time to first token and inter-token latency taken from that server.

Needs .tools/llm-venv (bash .ci/install-tools.sh --no-apt): skipped without it, failed under CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import tinyllm
from tests.support.llm_fixtures import tiny_llm_model  # noqa: F401  (the fixture)
from tests.support.procs import free_port, warmgate_env
from warmgate.entrypoint.engine.prompts import tolerance
from warmgate.state import READY_FILE, read_report

REPO = Path(__file__).resolve().parents[2]


def warmgate(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=warmgate_env(**env),
        check=False,
    )


@pytest.mark.timeout(300)
def test_warmgate_run_gates_transformers_serve_on_ttft_and_itl(tiny_llm_model: Path, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()
    state = tmp_path / "state"
    config = {
        "server": {
            "command": tinyllm.serve_argv(tiny_llm_model, port),
            "url": f"http://127.0.0.1:{port}",
            "protocol": "openai",
            "model": str(tiny_llm_model),
            "openai": {"family": "transformers"},
            "start_timeout_s": 180,
            "request_timeout_s": 60,
        },
        "shapes": [
            {
                "name": "chat-48",
                "prompt": {"tokens": 48, "max_tokens": 8, "stream": True, "chat": True},
                "count": 3,
            },
            {
                "name": "text-400",
                "prompt": {"tokens": 400, "max_tokens": 8, "stream": False, "chat": False},
                "count": 3,
            },
        ],
        "load_test": {"mode": "closed", "concurrency": 2, "duration_s": 2},
        # A tiny model on a shared CPU: the SLOs are loose, the ratio left to the noise rule.
        "gate": {"ttft_p95_ms": 20_000, "itl_p95_ms": 5_000, "max_first_to_steady_ratio": 10},
        "state_dir": str(state),
        "drain": {"quiet_period_s": 0, "grace_period_s": 10},
    }
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    env = tinyllm.serve_env(tiny_llm_model)

    done = warmgate("run", "--once", "-c", str(path), env=env, timeout=280)

    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    report = read_report(state / READY_FILE)
    assert report.gate.passed and report.protocol == "openai"
    assert {c.name for c in report.gate.checks} >= {
        "ttft_p95_ms",
        "itl_p95_ms",
        "warmup[chat-48]",
        "warmup[text-400]",
    }
    shapes = {shape.name: shape for shape in report.shapes}
    for name, target in (("chat-48", 48), ("text-400", 400)):
        prompt = shapes[name].prompt
        assert prompt is not None and prompt.counted_by == "usage" and prompt.unique
        assert prompt.achieved_tokens is not None and abs(prompt.achieved_tokens - target) <= tolerance(
            target
        )
        assert shapes[name].post_warm_s is not None and shapes[name].post_warm_baseline is not None
    load = report.load_test
    assert load is not None and not load.errors and load.tokens is not None
    # The streamed shape: a first token and seven gaps per answer, as the tiny model generates.
    streamed = load.per_shape_tokens["chat-48"]
    assert streamed.ttft.count > 0 and streamed.itl.count == 7 * streamed.ttft.count
    assert streamed.output_tokens == 8 * streamed.ttft.count and streamed.output_tokens_per_s > 0
    assert load.tokens.ttft.count == streamed.ttft.count
    # The whole answer: its time to first token is its latency, and it has no gaps.
    whole = load.per_shape_tokens["text-400"]
    assert whole.itl.count == 0 and whole.output_tokens == 8 * whole.ttft.count
    raw = json.loads((state / READY_FILE).read_text())
    assert raw["load_test"]["tokens"]["itl"]["p95_s"] > 0

    shown = warmgate("report", str(state / READY_FILE), env={}, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "completions (TTFT: time to first token" in shown.stdout and "text-400" in shown.stdout
