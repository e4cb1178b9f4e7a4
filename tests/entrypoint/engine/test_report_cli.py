"""`warmgate report [ready.json]`: the evidence as tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from warmgate.cli import run_cli
from warmgate.entrypoint.commands import REPORT_UNREADABLE
from warmgate.entrypoint.report import format_report
from warmgate.state import (
    ConcurrencyCheckReport,
    GateCheck,
    GateVerdict,
    GpuMemory,
    LatencyStats,
    LoadTestReport,
    MemoryReport,
    Report,
    ShapeReport,
    StateWriter,
    read_report,
    to_json_dict,
)

MIB = 1024 * 1024


def sample_report() -> Report:
    steady = LatencyStats(
        count=7, mean_s=0.011, p50_s=0.010, p90_s=0.012, p95_s=0.013, p99_s=0.014, max_s=0.015
    )
    return Report(
        instance_id="abc",
        created_at=1_700_000_000,
        server_url="http://127.0.0.1:8000",
        protocol="oip",
        model="demo",
        phases={"load-testing": 5.0, "waiting-for-server": 1.5, "warming": 2.25, "post-warm-check": 0.02},
        shapes=[
            ShapeReport(
                name="bs1",
                batch_size=1,
                requests=16,
                first_s=0.5123,
                steady=steady,
                first_to_steady_ratio=51.23,
                post_warm_s=0.011,
                post_warm_ratio=1.1,
                concurrency_check=ConcurrencyCheckReport(
                    variants=4, checked=40, matched=40, max_abs_deviation=0.0
                ),
            ),
            ShapeReport(
                name="bs8",
                batch_size=8,
                stable=False,
                concurrency_check=ConcurrencyCheckReport(skipped="compare: false"),
            ),
        ],
        load_test=LoadTestReport(
            mode="closed",
            duration_s=5.0,
            concurrency=4,
            requests=1000,
            errors={"timeout": 2},
            throughput_rps=199.6,
            latency=steady,
            per_shape={"bs1": steady},
            per_shape_errors={"bs1": {"timeout": 2}},
        ),
        memory=MemoryReport(
            peak_rss_bytes=900 * MIB,
            peak_pss_bytes=600 * MIB,
            samples=30,
            limit_bytes=2048 * MIB,
            limit_source="cgroup v2 /sys/fs/cgroup/memory.max",
            gpus=[
                GpuMemory(index=0, name="H100", peak_used_bytes=10 * 1024 * MIB, total_bytes=80 * 1024 * MIB)
            ],
        ),
        gate=GateVerdict(
            passed=False,
            reason="load-test p95 13.0 ms exceeds the SLO of 5 ms",
            checks=[
                GateCheck(name="warmup[bs1]", passed=True),
                GateCheck(
                    name="p95_ms",
                    passed=False,
                    value=13.0,
                    threshold=5.0,
                    detail="load-test p95 13.0 ms exceeds...",
                ),
            ],
        ),
    )


def test_format_report_shows_every_section() -> None:
    text = format_report(sample_report())
    assert "model demo (oip) at http://127.0.0.1:8000; attempt 1; 2023-11-14 22:13:20 UTC" in text
    # Phases in lifecycle order, whatever the JSON key order.
    assert (
        "timeline: waiting-for-server 1.50s -> warming 2.25s -> load-testing 5.00s -> post-warm-check 0.02s "
        "(total 8.77s)" in text
    )
    lines = text.splitlines()
    header = next(line for line in lines if line.strip().startswith("shape"))
    assert header.split() == [
        "shape", "batch", "reqs", "errors", "first", "steady", "p50", "steady", "p95", "first/p50",
        "post-warm", "post/p50", "stable", "checked", "mismatch",
    ]  # fmt: skip
    bs1 = next(line for line in lines if line.strip().startswith("bs1 "))
    assert bs1.split() == ["bs1", "1", "16", "0", "512.3", "ms", "10.0", "ms", "13.0", "ms", "51.2x",
                           "11.0", "ms", "1.1x", "-", "40", "0"]  # fmt: skip
    bs8 = next(line for line in lines if line.strip().startswith("bs8 "))
    assert bs8.split()[-3:] == ["NO", "skip", "-"]
    assert (
        "load test (closed loop, concurrency 4, 5.00s): 1000 requests, 199.6 req/s, errors: timeout 2" in text
    )
    assert "memory: server peak 600 MiB PSS (900 MiB RSS), 30 samples; limit 2048 MiB from cgroup v2" in text
    assert "GPU 0 H100: peak 10240 of 81920 MiB" in text
    assert "gate FAILED: load-test p95 13.0 ms exceeds the SLO of 5 ms" in text
    assert "[FAIL] p95_ms" in text and "13 (limit 5)" in text
    assert "[pass] warmup[bs1]" in text


def test_report_command_reads_a_given_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ready.json"
    path.write_text(json.dumps(to_json_dict(sample_report())))
    assert run_cli(["report", str(path)]) == 0
    assert "gate FAILED: load-test p95" in capsys.readouterr().out


def test_report_command_prints_what_the_gate_did_not_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = sample_report()
    report.gate = GateVerdict(
        passed=True,
        reason="all 1 checks passed",
        checks=[GateCheck(name="warmup[bs1]", passed=True)],
        notes=["no latency SLO is set (gate.p95_ms, gate.p99_ms): the gate judged warmth only"],
    )
    path = tmp_path / "ready.json"
    path.write_text(json.dumps(to_json_dict(report)))
    assert run_cli(["report", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    verdict = lines.index("gate PASSED: all 1 checks passed")
    assert (
        lines[verdict + 1]
        == "  note: no latency SLO is set (gate.p95_ms, gate.p99_ms): the gate judged warmth only"
    )


def test_a_marker_from_before_the_notes_and_the_post_warm_baseline_still_reads(tmp_path: Path) -> None:
    """ready.json stays backward compatible: the new fields are optional."""
    document = to_json_dict(sample_report())
    del document["gate"]["notes"]
    for shape in document["shapes"]:
        del shape["post_warm_baseline"]
    path = tmp_path / "ready.json"
    path.write_text(json.dumps(document))
    report = read_report(path)
    assert report.gate.notes == [] and report.shapes[0].post_warm_baseline is None
    assert "note:" not in format_report(report)


def test_report_command_defaults_to_the_configs_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir = tmp_path / "state"
    writer = StateWriter(state_dir)
    writer.prepare()
    writer.write_ready(sample_report())
    config = tmp_path / "warmup.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state_dir)}))
    assert run_cli(["report", "-c", str(config)]) == 0
    assert "timeline: waiting-for-server" in capsys.readouterr().out


def test_missing_marker_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["report", str(tmp_path / "ready.json")]) == REPORT_UNREADABLE
    err = capsys.readouterr().err
    hint = "(the gate has not passed in this state directory)"
    assert err == f"warmgate: {tmp_path}/ready.json does not exist {hint}\n"


def test_a_file_that_is_not_a_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ready.json"
    path.write_text('{"hello": 1}')
    assert run_cli(["report", str(path)]) == REPORT_UNREADABLE
    assert "not a valid report document" in capsys.readouterr().err


def test_bad_config_is_the_usual_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "warmup.yaml"
    config.write_text("gate: {p95_ms: -1}\n")
    assert run_cli(["report", "-c", str(config)]) == 2
    assert "gate.p95_ms: must be > 0" in capsys.readouterr().err
