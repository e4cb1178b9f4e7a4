"""The evidence benchmarks still run: each script with --smoke (tiny counts and durations) completes
and writes its result structure. Nothing here looks at a timing; figures live in docs/benchmarks.md.

Third-party pieces: haproxy (Debian package) for scale_out, MLServer (PyPI, in its own venv at
.tools/mlserver-venv) for gate_effect's mlserver-onnx cell and server_throughput, matplotlib for
the scale-out plot.
Outside CI a missing piece skips its test with the reason; with CI set it fails, except the MLServer
cells, which CI may opt out of explicitly with WARMGATE_BENCH_SKIP_MLSERVER=1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
MLSERVER = REPO / ".tools" / "mlserver-venv" / "bin" / "mlserver"

pytestmark = pytest.mark.slow


def require(available: bool, what: str, how: str, opt_out: str | None = None) -> None:
    if available:
        return
    if opt_out and os.environ.get(opt_out) == "1":
        pytest.skip(f"{what} not installed; skipped by {opt_out}=1")
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI: {how}")
    pytest.skip(f"{what} not installed ({how})")


def run_script(name: str, *args: str, tmp_path: Path, timeout: float = 150) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--json", str(out), *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    document = json.loads(out.read_text())
    assert set(document["machine"]) >= {"nproc", "cpu", "memory_gib", "date"}
    return document


def check_gate_effect(document: dict[str, Any], target: str) -> None:
    records = [r for r in document["records"] if r["target"] == target]
    assert {r["condition"] for r in records} == {"a", "b"}
    for record in records:
        assert "error" not in record, record
        assert record["time_to_ready_s"] > 0
        for shape in record["shapes"].values():
            assert shape["first_status"] == 200
            assert shape["first_ms"] > 0 and shape["steady_p50_ms"] > 0
            assert shape["ratio"] is not None
    b = next(r for r in records if r["condition"] == "b")
    assert "warming" in b["warmgate_phases_s"]
    rows = [row for row in document["summary"] if row["target"] == target]
    assert rows and all(row["a"]["ratio"]["n"] == 1 and row["b"]["ratio"]["n"] == 1 for row in rows)


def test_gate_effect_reference_server(tmp_path: Path) -> None:
    document = run_script("gate_effect", "--targets", "onnx", tmp_path=tmp_path)
    check_gate_effect(document, "onnx")


def test_gate_effect_reference_server_over_grpc(tmp_path: Path) -> None:
    document = run_script("gate_effect", "--targets", "onnx", "--protocol", "oip-grpc", tmp_path=tmp_path)
    check_gate_effect(document, "onnx")
    assert all("gRPC ServerReady" in r["ready_signal"] for r in document["records"] if r["condition"] == "a")


def test_protocols_bench(tmp_path: Path) -> None:
    document = run_script("protocols_bench", tmp_path=tmp_path)
    records = document["records"]
    assert {(r["model"], r["protocol"], r["batch_size"]) for r in records} == {
        (m, p, b) for m in ("demo", "tiny") for p in ("json", "binary", "grpc") for b in (1, 8)
    }
    assert all(r["errors"] == 0 and r["requests"] > 0 and r["rps"] > 0 for r in records), records
    by = {(r["model"], r["protocol"], r["batch_size"]): r for r in records}
    # Binary and gRPC carry the tensor as raw bytes: a quarter of JSON's text, or less.
    assert by[("tiny", "binary", 8)]["body_bytes"] * 3 < by[("tiny", "json", 8)]["body_bytes"]
    assert by[("tiny", "grpc", 8)]["body_bytes"] * 3 < by[("tiny", "json", 8)]["body_bytes"]
    assert len(document["summary"]) == 12


def require_mlserver() -> None:
    require(
        MLSERVER.exists(),
        "MLServer",
        "python3 -m venv .tools/mlserver-venv && "
        ".tools/mlserver-venv/bin/pip install mlserver==1.7.1 onnxruntime",
        opt_out="WARMGATE_BENCH_SKIP_MLSERVER",
    )


def test_gate_effect_mlserver(tmp_path: Path) -> None:
    require_mlserver()
    document = run_script("gate_effect", "--targets", "mlserver-onnx", tmp_path=tmp_path)
    check_gate_effect(document, "mlserver-onnx")


def test_server_throughput_mlserver(tmp_path: Path) -> None:
    require_mlserver()
    document = run_script("server_throughput", tmp_path=tmp_path)
    assert document["threads"] >= 1
    assert document["warmgate_logged"] == {"threads": document["threads"], "concurrency": 1}
    for cell in document["agreement"].values():
        # Same ONNX file, same input: a correctness check of the comparison, not a timing.
        assert cell["same_names"] and cell["max_abs_diff"] is not None and cell["max_abs_diff"] < 1e-3
    rows = document["summary"]
    assert {(row["batch_size"], row["concurrency"]) for row in rows} == {(1, 1), (1, 2), (8, 1), (8, 2)}
    for row in rows:
        for server in ("warmgate", "mlserver"):
            assert row[server]["requests"] > 0 and row[server]["errors"] == 0
            assert row[server]["p50_ms"] > 0 and row[server]["inferences_per_s"] > 0
        assert row["ratio"] is not None


@pytest.mark.timeout(180)
def test_scale_out(tmp_path: Path) -> None:
    require(shutil.which("haproxy") is not None, "haproxy", "apt-get install -y haproxy")
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    require(has_matplotlib, "matplotlib", "pip install 'warmgate[bench]'")
    plot = tmp_path / "scale_out.png"
    document = run_script("scale_out", "--plot", str(plot), tmp_path=tmp_path, timeout=170)
    assert [r["variant"] for r in document["results"]] == ["a", "b"]
    for result in document["results"]:
        assert result["requests"] > 0 and result["timeline"]
        assert set(result) >= {"steady_p95_ms", "worst_window_p95_ms", "ratio", "admitted_s", "windows"}
        assert set(result["admitted_s"]) == {"r2", "r3"}
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(180)
def test_time_to_ready(tmp_path: Path) -> None:
    document = run_script("time_to_ready", tmp_path=tmp_path)
    (record,) = document["records"]
    assert set(record["steps_s"]) == {
        "warmgate start", "server load", "polling delay", "warmup", "load test", "post-warm + gate",
    }  # fmt: skip
    assert all(v is not None and v >= 0 for v in record["steps_s"].values())
    assert record["total_s"] > 0 and len(document["bare_s"]) == 1


@pytest.mark.timeout(180)
def test_postwarm_reliability(tmp_path: Path) -> None:
    document = run_script("postwarm_reliability", "--targets", "demo,cold", tmp_path=tmp_path, timeout=170)
    records = document["records"]
    assert [r["target"] for r in records] == ["demo", "cold"]
    for record in records:
        assert record["outcome"] != "other-failure", record
        assert record["exit_code"] in (0, 80) and record["ratios"]
        assert all(s["limit"] >= 3.0 for s in record["ratios"].values())
    demo, cold = records
    assert set(demo["ratios"]) == {"bs1", "bs4", "bs8"} and set(cold["ratios"]) == {"bs1", "bs8"}
    assert [row["target"] for row in document["summary"]] == ["demo", "cold"]


@pytest.mark.timeout(180)
def test_early_stop(tmp_path: Path) -> None:
    document = run_script("early_stop", "--p95-ms", "1000", tmp_path=tmp_path)
    records = document["records"]
    assert [r["early_stop"] for r in records] == [False, True]
    for record in records:
        assert record["stopped"] in ("duration", "converged") and record["requests"] > 0
        assert record["load_test_s"] > 0 and record["slo_p95_ms"] == 1000
    assert document["verdicts_changed"] in (0, 1) and len(document["summary"]) == 2


@pytest.mark.timeout(180)
def test_spawn_time(tmp_path: Path) -> None:
    # This checkout on both sides: the smoke only checks that the script runs and what it writes.
    document = run_script("spawn_time", "--before", str(REPO), tmp_path=tmp_path)
    for side in ("before", "after"):
        row = document["idle"][side]
        assert row["starts"] == 2 and row["exec_to_spawn_s"] > 0 and row["time_to_ready_s"] > 0
        assert row["server_load_s"] > 0 and row["proving_s"] > 0
