"""The fault-injection scenario table (issue 12): `warmgate run --once` against a real fault server
process for each class of misbehaviour a server shows in the field. Every row asserts the exit
code, the one-line reason in the log and in status.json, that no ready.json is left, that no
traceback was printed, and that the server process is gone when warmgate has exited.

Malformed and oversized answers, and a slow start (not a fault), have their own table
(test_untrusted_answers.py); warmgate's own failures (full disk, escaped exceptions) are in
test_fail_closed.py; hostile configs in tests/test_config_hostile.py; hostile state files and
clients of the sidecar in tests/probe/.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultrun import gone, run_against, server_pid
from tests.support.procs import poll_until
from warmgate import exitcodes

MIB = 1 << 20


@dataclass(frozen=True)
class Scenario:
    behaviour: str
    exit_code: int
    reason: str
    options: tuple[str, ...] = ()
    sections: dict[str, Any] = field(default_factory=dict)


SCENARIOS = {
    "hang": Scenario(
        "hang",
        exitcodes.GATE_FAILED,
        "gate failed: shape bs4: no response within 1s (server.request_timeout_s)",
        sections={"server": {"request_timeout_s": 1}},
    ),
    "reset": Scenario("reset", exitcodes.GATE_FAILED, "server closed the connection"),
    # Readiness drops for 1.5 s at a time while the load test runs; retry gets one more attempt,
    # which meets the same flapping server.
    "flapping-health": Scenario(
        "flapping",
        exitcodes.GATE_FAILED,
        "gate failed: server readiness lost during",
        options=("--flap-period", "1.5"),
        sections={
            "load_test": {"enabled": True, "duration_s": 4},
            "policy": {"on_failure": "retry", "retries": 1},
        },
    ),
    "unknown-model": Scenario(
        "unknown-model",
        exitcodes.SERVER_NEVER_HEALTHY,
        "server.model 'demo' is not served",
        sections={"server": {"unknown_model_grace_s": 1}},
    ),
    # 64 MiB kept per request against a 400 MiB limit: warmup alone outgrows it.
    "memory-growth": Scenario(
        "memory-growth",
        exitcodes.GATE_FAILED,
        "gate failed: server peak memory",
        options=("--grow-mb", "64"),
        sections={"memory": {"limit_bytes": 400 * MIB}},
    ),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_each_fault_class_ends_closed_with_one_line(tmp_path: Path, name: str) -> None:
    scenario = SCENARIOS[name]
    proc, state_dir = run_against(tmp_path, scenario.behaviour, *scenario.options, **scenario.sections)
    try:
        code = proc.wait(100)
    finally:
        proc.close()
    assert code == scenario.exit_code, proc.output
    assert scenario.reason in proc.output
    assert "Traceback" not in proc.output
    assert not (state_dir / "ready.json").exists()
    status = json.loads((state_dir / "status.json").read_text())
    assert status["phase"] == "failed"
    assert scenario.reason in status["message"] and "\n" not in status["message"]
    poll_until(lambda: gone(server_pid(proc)), timeout=10)
