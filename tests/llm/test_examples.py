"""The LLM example configurations: each passes `warmgate check` (the vLLM and TGI ones can only be
checked here: GPU servers with hub weights), and examples/transformers-serve.yaml passes the gate
end to end against the real server it names, run as its header says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import tinyllm
from tests.support.procs import free_port, warmgate_env

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LLM_EXAMPLES = ["vllm-chat.yaml", "tgi-chat.yaml", "transformers-serve.yaml"]


def warmgate(
    *args: str, cwd: Path = REPO, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "warmgate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=warmgate_env(**env),
        check=False,
    )


@pytest.mark.parametrize("name", LLM_EXAMPLES)
def test_example_passes_warmgate_check(name: str) -> None:
    done = warmgate("check", "-c", str(EXAMPLES / name))
    assert done.returncode == 0, done.stderr
    effective = yaml.safe_load(done.stdout)
    assert effective["server"]["protocol"] == "openai"
    assert all(shape.get("prompt") for shape in effective["shapes"])
    source = yaml.safe_load((EXAMPLES / name).read_text())
    assert [s["name"] for s in effective["shapes"]] == [s["name"] for s in source["shapes"]]
    # Each example states its TTFT and ITL SLOs: nothing for check to warn about.
    assert effective["gate"]["ttft_p95_ms"] and effective["gate"]["itl_p95_ms"]
    assert "no latency SLO" not in done.stderr, done.stderr


def localised(config: dict[str, Any], port: int) -> dict[str, Any]:
    """The example on `port` instead of 8000 (tests run side by side)."""
    server = config["server"]
    server["command"] = [str(port) if arg == "8000" else arg for arg in server["command"]]
    server["url"] = server["url"].replace(":8000", f":{port}")
    return config


@pytest.mark.timeout(300)
def test_transformers_serve_example_passes_the_gate_against_the_real_server(tmp_path: Path) -> None:
    tinyllm.require_llm_venv()
    # Laid out as the example's header says, from a "repository root" of its own.
    (tmp_path / ".tools").symlink_to(REPO / ".tools")
    config = yaml.safe_load((EXAMPLES / "transformers-serve.yaml").read_text())
    model_dir = tmp_path / config["server"]["model"]
    tinyllm.build_model(model_dir)
    port = free_port()
    config_file = tmp_path / "warmup.yaml"
    config_file.write_text(yaml.safe_dump(localised(config, port)))
    state = tmp_path / "state"

    done = warmgate("run", "--once", "-c", str(config_file), cwd=tmp_path, timeout=280,
                    WARMGATE_STATE_DIR=str(state))  # fmt: skip

    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    report = json.loads((state / "ready.json").read_text())
    assert report["gate"]["passed"] is True, report["gate"]
    assert report["protocol"] == "openai" and report["model"] == config["server"]["model"]
    assert sorted(s["name"] for s in report["shapes"]) == sorted(s["name"] for s in config["shapes"])
    for shape in report["shapes"]:
        # Calibrated against the server's own count, and a prompt no other request had.
        prompt = shape["prompt"]
        assert prompt["unique"] is True, shape["name"]
        assert abs(prompt["achieved_tokens"] - prompt["target_tokens"]) <= max(
            4, prompt["target_tokens"] * 0.02
        )
    tokens = report["load_test"]["tokens"]
    assert tokens["output_tokens"] > 0 and tokens["ttft"]["count"] > 0 and tokens["itl"]["count"] > 0
    assert {c["name"] for c in report["gate"]["checks"]} >= {"ttft_p95_ms", "itl_p95_ms"}
    shown = warmgate("report", str(state / "ready.json"))
    assert shown.returncode == 0 and "chat-1024" in shown.stdout, shown.stderr
