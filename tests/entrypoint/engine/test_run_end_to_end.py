"""`warmgate run --once` as a real process over a real (fake) model server process."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import WARMGATE, Proc, free_port, poll_until, warmgate_env
from warmgate import exitcodes
from warmgate.state import read_report

FAKE_SERVER = str(Path(__file__).with_name("fakeserver.py"))


def run_once(tmp_path: Path, *server_args: str, **sections: Any) -> tuple[Proc, Path]:
    port = free_port()
    state_dir = tmp_path / "state"
    config: dict[str, Any] = {
        "server": {
            "url": f"http://127.0.0.1:{port}",
            "protocol": "oip",
            "model": "demo",
            "start_timeout_s": 30,
        },
        "shapes": [
            {"name": "bs1", "batch_size": 1, "inputs": {"input": {"dims": [4]}}, "count": 3},
            {"name": "bs4", "batch_size": 4, "inputs": {"input": {"dims": [4]}}, "count": 3},
        ],
        "load_test": {"duration_s": 0.3, "concurrency": 2},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0.2, "grace_period_s": 5},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    server = [sys.executable, FAKE_SERVER, "--port", str(port), *server_args]
    proc = Proc([*WARMGATE, "run", "--once", "-c", str(path), "--", *server], env=warmgate_env())
    return proc, state_dir


def test_a_warm_server_passes_and_the_marker_holds_the_report(tmp_path: Path) -> None:
    proc, state_dir = run_once(tmp_path, "--first-delay", "0.2")
    try:
        assert proc.wait(60) == exitcodes.OK, proc.output
    finally:
        proc.close()
    report = read_report(state_dir / "ready.json")
    assert report.gate.passed
    assert [s.name for s in report.shapes] == ["bs1", "bs4"]
    assert all(s.first_s is not None and s.first_s >= 0.2 for s in report.shapes)
    assert report.memory is not None and report.memory.peak_rss_bytes and report.memory.samples > 0
    assert {"waiting-for-server", "warming", "load-testing"} <= set(report.phases)
    assert "gate passed:" in proc.output and "warmup (smallest shape first):" in proc.output
    # No latency SLO in this config: the marker and the log say the gate judged warmth only.
    assert report.gate.notes and report.gate.notes[0].startswith("no latency SLO is set")
    assert "gate passed, but no latency SLO is set (gate.p95_ms, gate.p99_ms)" in proc.output


def test_a_rejected_shape_fails_the_gate_with_its_reason(tmp_path: Path) -> None:
    proc, state_dir = run_once(tmp_path, "--fail-batch", "4")
    try:
        assert proc.wait(60) == exitcodes.GATE_FAILED, proc.output
    finally:
        proc.close()
    assert "gate failed: shape bs4: HTTP 500 from POST http://127.0.0.1:" in proc.output
    assert "RuntimeError: shape mismatch in layer 3" in proc.output
    assert "Traceback" not in proc.output
    assert not (state_dir / "ready.json").exists()
    status = json.loads((state_dir / "status.json").read_text())
    assert status["phase"] == "failed" and "shape bs4: HTTP 500" in status["message"]


def test_a_server_dying_mid_warmup_ends_the_run_with_its_exit_code(tmp_path: Path) -> None:
    proc, state_dir = run_once(tmp_path, "--die-after", "2", "--die-code", "3")
    try:
        assert proc.wait(60) == 3, proc.output
    finally:
        proc.close()
    assert "server exited during warming: exit code 3" in proc.output
    assert "Traceback" not in proc.output and "gate failed" not in proc.output
    assert not (state_dir / "ready.json").exists()


def test_a_server_dying_mid_load_ends_the_run_with_its_exit_code(tmp_path: Path) -> None:
    # Warmup takes 3 + 8 (check inputs) requests per shape; the server dies in the load test.
    proc, _ = run_once(tmp_path, "--die-after", "40", "--die-code", "5", load_test={"duration_s": 30})
    try:
        assert proc.wait(60) == 5, proc.output
    finally:
        proc.close()
    assert "server exited during load-testing: exit code 5" in proc.output


def test_term_during_warmup_stops_cleanly_without_a_marker(tmp_path: Path) -> None:
    proc, state_dir = run_once(tmp_path, "--hang", server={"request_timeout_s": 60})
    try:
        poll_until(lambda: _phase(state_dir) == "warming", timeout=30)
        proc.signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        proc.close()
    assert code == 0, proc.output  # the fake server exits 0 on SIGTERM
    assert "received SIGTERM: shutting down" in proc.output
    assert "Traceback" not in proc.output
    assert not (state_dir / "ready.json").exists()
    assert _phase(state_dir) == "stopped"


def _phase(state_dir: Path) -> str | None:
    try:
        return str(json.loads((state_dir / "status.json").read_text())["phase"])
    except (OSError, ValueError, KeyError):
        return None
