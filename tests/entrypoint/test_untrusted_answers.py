"""`warmgate run --once` over a real fault server process that answers badly: every malformed,
oversized or wrong-batch answer fails the gate (exit 80) with a one-line reason naming the shape
and what was wrong; no traceback, no ready.json, and the server is not left running.

Before the decoders were hardened, `shape-strings`, `shape-nested`, `shape-nan`, `deep` and
`datatype-unknown` (in the comparison) ended the run with a traceback and exit 1, and
`shape-floats`, `shape-negative`, `shape-bools`, `shape-huge`, `data-length`,
`datatype-mismatch`, `integer-nan` and `wrong-batch` passed the gate; `oversized` was read whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.faultrun import gone, run_against, server_pid
from tests.support.procs import poll_until
from warmgate import exitcodes
from warmgate.state import read_report

SHAPE = "output output0: shape"
NOT_DIMENSIONS = "is not a list of non-negative integers"
# Behaviour -> what the gate's reason must say about the answer (after "shape bs4: ").
MALFORMED_REASONS = {
    "not-json": "response is not JSON (Expecting value: line 1 column 1 (char 0))",
    "not-object": "response is a JSON array, not an object",
    "error-field": "response carries an error: CUDA error: out of memory",
    "no-outputs": "response has no outputs",
    "shape-strings": f'{SHAPE} ["4", "4"] {NOT_DIMENSIONS} (element 0 is a JSON string)',
    "shape-floats": f"{SHAPE} [4.0, 4.0] {NOT_DIMENSIONS} (element 0 is a JSON number)",
    "shape-negative": f"{SHAPE} [-1, 4] {NOT_DIMENSIONS} (element 0 is negative)",
    "shape-bools": f"{SHAPE} [true, true] {NOT_DIMENSIONS} (element 0 is a JSON boolean)",
    "shape-nested": f"{SHAPE} [[4, 4]] {NOT_DIMENSIONS} (element 0 is a JSON array)",
    "shape-huge": f"{SHAPE} [18446744073709551616, 4] {NOT_DIMENSIONS} (element 0 is over 2**63-1)",
    "shape-nan": f"{SHAPE} [NaN, 4] {NOT_DIMENSIONS} (element 0 is a JSON non-finite number)",
    "data-length": f"{SHAPE} [4, 4] holds 16 values, data has 15",
    "datatype-unknown": "output output0: datatype 'FLOAT32' is not an Open Inference Protocol datatype",
    "datatype-mismatch": "output output0: datatype INT32 but data holds a JSON string",
    "integer-nan": "output output0: datatype INT64 but data holds a JSON non-finite number (NaN)",
    "huge-integer": "response is not JSON (Exceeds the limit (4300 digits) for integer string conversion",
    "deep": "response nests deeper than 100 levels",
    "non-utf8": "response is not UTF-8 text",
    "wrong-batch": f"{SHAPE} [5, 4] does not lead with the batch size 4: the server did not answer the shape "
    "that was sent",
    "oversized": "answer is over the 64 MiB cap on an answer (stopped reading) from POST http://127.0.0.1:",
}


@pytest.mark.parametrize("behaviour", list(MALFORMED_REASONS))
def test_a_malformed_answer_fails_the_gate_with_a_one_line_reason(tmp_path: Path, behaviour: str) -> None:
    proc, state_dir = run_against(tmp_path, behaviour)
    try:
        code = proc.wait(90)
    finally:
        proc.close()
    assert code == exitcodes.GATE_FAILED, proc.output
    reason = f"shape bs4: {MALFORMED_REASONS[behaviour]}"
    assert f"gate failed: {reason}" in proc.output
    assert "Traceback" not in proc.output
    assert not (state_dir / "ready.json").exists()
    status = json.loads((state_dir / "status.json").read_text())
    assert status["phase"] == "failed"
    assert reason in status["message"] and "\n" not in status["message"]
    assert len(status["message"]) < 600, status["message"]
    poll_until(lambda: gone(server_pid(proc)), timeout=10)


def test_the_same_server_answering_properly_passes(tmp_path: Path) -> None:
    # The control: the cases above fail for their answers, not for the setup.
    proc, _ = run_against(tmp_path, "ok", load_test={"enabled": True, "duration_s": 0.3})
    try:
        code = proc.wait(90)
    finally:
        proc.close()
    assert code == exitcodes.OK, proc.output
    assert "Traceback" not in proc.output


def test_a_slow_start_is_waited_for_and_then_warmed(tmp_path: Path) -> None:
    proc, state_dir = run_against(tmp_path, "slow-start", "--ready-after", "1.5")
    try:
        code = proc.wait(90)
    finally:
        proc.close()
    assert code == exitcodes.OK, proc.output
    report = read_report(state_dir / "ready.json")
    assert report.gate.passed
    assert report.phases["waiting-for-server"] >= 1.4
