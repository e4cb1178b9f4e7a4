"""State files: atomic writes, stale markers, unusable directories, corrupt documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.probe.fakes import full_report
from tests.support.fulldisk import fill, small_filesystem
from warmgate.state import (
    READY_FILE,
    Cause,
    Diagnosis,
    GateVerdict,
    LatencyStats,
    Phase,
    PromptReport,
    QuantileInterval,
    Report,
    ShapeReport,
    StartupStep,
    StateError,
    StateReadError,
    StateWriter,
    TokenStats,
    WarmedShape,
    atomic_write_json,
    read_report,
    read_status,
    to_json_dict,
    writer_alive,
)

WRITER = """
import sys
from pathlib import Path
from warmgate.state import atomic_write_json
path = Path(sys.argv[1])
print("ready", flush=True)
for i in range(100000):
    # Large and varying in size, so a torn write would show up as invalid or short JSON.
    atomic_write_json(path, {"i": i, "padding": "x" * (1000 + (i * 7919) % 50000), "end": True})
"""


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    atomic_write_json(path, {"i": -1, "padding": "", "end": True})
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
            seen: set[int] = set()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and writer.poll() is None:
                document = json.loads(path.read_text())  # raises on a torn file
                assert document["end"] is True
                seen.add(document["i"])
            assert len(seen) > 10, "the writer did not rewrite the file while we read"
        finally:
            writer.kill()


def test_prepare_removes_a_stale_marker_and_writes_a_new_instance(tmp_path: Path) -> None:
    (tmp_path / "ready.json").write_text("{}")
    writer = StateWriter(tmp_path, clock=lambda: 1000.0)
    writer.prepare()
    assert not (tmp_path / "ready.json").exists()
    status = read_status(tmp_path)
    assert status.instance_id == writer.instance_id
    assert status.phase is Phase.STARTING


def test_phase_changes_keep_the_phase_start_time(tmp_path: Path) -> None:
    now = [1000.0]
    writer = StateWriter(tmp_path, clock=lambda: now[0])
    writer.prepare()
    now[0] = 1005.0
    writer.set_phase(Phase.WARMING)
    now[0] = 1007.0
    writer.set_progress(2, 10, "shape bs1")
    status = read_status(tmp_path)
    assert (status.phase_started_at, status.updated_at) == (1005.0, 1007.0)
    assert status.progress is not None and (status.progress.done, status.progress.total) == (2, 10)


def test_unusable_state_dir_raises_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"state directory .*/file/state is not usable: Not a directory"):
        StateWriter(blocker / "state").prepare()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a valid status document (Invalid JSON"),
        (b'{"phase": "ready"', "not a valid status document"),
        (b'{"instance_id": "x", "pid": 1, "phase": "bogus"}', "not a valid status document (phase"),
        (b"\xff\xfe garbage", "not a valid status document"),
    ],
)
def test_corrupt_status_is_a_read_error(tmp_path: Path, content: bytes, expected: str) -> None:
    (tmp_path / "status.json").write_bytes(content)
    with pytest.raises(StateReadError, match=expected.replace("(", r"\(")):
        read_status(tmp_path)


def test_missing_status_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(StateReadError, match="does not exist"):
        read_status(tmp_path)


def test_the_running_writer_holds_the_instance_lock_until_it_is_gone(tmp_path: Path) -> None:
    assert writer_alive(tmp_path) is None  # nothing started here yet
    writer = StateWriter(tmp_path)
    writer.prepare()
    assert writer_alive(tmp_path) is True
    writer.close()  # what the kernel does when the process dies, however it dies
    assert writer_alive(tmp_path) is False


def test_a_second_live_writer_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = StateWriter(tmp_path)
    first.prepare()
    try:
        with pytest.raises(StateError, match="in use by another running warmgate"):
            StateWriter(tmp_path).prepare(lock_timeout_s=0.05)
    finally:
        first.close()
    StateWriter(tmp_path).prepare(lock_timeout_s=0.05)  # free once the first is gone


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from warmgate.state import Phase, StateWriter
writer = StateWriter(Path(sys.argv[1]), instance_id="killed")
writer.prepare()
writer.set_phase(Phase.READY)
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_releases_the_lock(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ready", result.stderr
    assert read_status(tmp_path).phase is Phase.READY  # the files still say ready...
    assert writer_alive(tmp_path) is False  # ...but nobody is behind them


def test_a_full_disk_cannot_keep_the_marker_when_readiness_is_lost(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small") as state_dir:
        writer = StateWriter(state_dir)
        writer.prepare()
        writer.set_phase(Phase.READY)
        writer.write_ready(
            Report(
                instance_id=writer.instance_id,
                created_at=0.0,
                server_url="",
                protocol="oip",
                model="m",
                gate=GateVerdict(passed=True),
            )
        )
        fill(state_dir)
        # The marker goes first; what that frees is then enough for the status to say why.
        writer.set_phase(Phase.DRAINING, "quiet period")
        assert not writer.ready_path.exists()
        assert read_status(state_dir).phase is Phase.DRAINING


def test_progress_on_a_full_disk_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_filesystem(tmp_path / "small") as state_dir:
        writer = StateWriter(state_dir)
        writer.prepare()
        writer.set_phase(Phase.WARMING)
        fill(state_dir)
        for done in range(3):
            writer.set_progress(done, 3, "shape bs1")
        warnings = [r.getMessage() for r in caplog.records if "progress is not recorded" in r.getMessage()]
        assert len(warnings) == 1
        with pytest.raises(StateError, match=r"cannot write .*status\.json: No space left on device"):
            writer.set_phase(Phase.LOAD_TESTING)


def test_a_marker_that_cannot_be_removed_is_an_error(tmp_path: Path) -> None:
    writer = StateWriter(tmp_path / "state")
    writer.prepare()
    writer.ready_path.mkdir()  # unlink() of a directory fails with EISDIR
    (writer.ready_path / "keep").touch()
    with pytest.raises(StateError, match="cannot remove the ready marker"):
        writer.set_phase(Phase.FAILED, "gate failed")


@pytest.mark.timeout(10)
def test_a_report_path_that_is_a_fifo_or_a_device_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "ready.json"
    os.mkfifo(fifo)
    with pytest.raises(StateReadError, match=r"ready\.json is a FIFO, not a regular file"):
        read_report(fifo)
    link = tmp_path / "zero.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(StateReadError, match=r"zero\.json is a character device, not a regular file"):
        read_report(link)


def test_llm_fields_are_optional_both_ways(tmp_path: Path) -> None:
    """A report written before prompt shapes existed still reads (every new field is optional),
    and a report with them round-trips; an older reader ignores them (extra fields ignored)."""
    old = {
        "instance_id": "i",
        "created_at": 1.0,
        "server_url": "http://127.0.0.1:8000",
        "protocol": "oip",
        "model": "demo",
        "shapes": [{"name": "bs1", "batch_size": 1}],
        "load_test": {"mode": "closed", "duration_s": 1.0},
        "gate": {"passed": True},
    }
    (tmp_path / "old.json").write_text(json.dumps(old))
    report = read_report(tmp_path / "old.json")
    assert report.shapes[0].prompt is None and report.load_test is not None
    assert report.load_test.tokens is None and report.load_test.per_shape_tokens == {}

    shape = replace(report.shapes[0], prompt=PromptReport(target_tokens=512, achieved_tokens=510))
    tokens = TokenStats(ttft=LatencyStats(count=3, p95_s=0.2), output_tokens=48, output_tokens_per_s=4.8)
    load = replace(report.load_test, tokens=tokens, per_shape_tokens={"bs1": tokens})
    new = replace(report, shapes=[shape], load_test=load)
    (tmp_path / "new.json").write_text(json.dumps(to_json_dict(new)))
    assert read_report(tmp_path / "new.json") == new


# ---- the documents without pydantic ---------------------------------------------------------


def test_the_state_module_loads_no_pydantic() -> None:
    """The probe sidecar reads these files: pydantic with the models cost it about 10 MiB."""
    code = "import sys, warmgate.state; print(sorted(m for m in sys.modules if m.startswith('pydantic')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert done.stdout.strip() == "[]"


def every_part_report(instance_id: str) -> Report:
    """full_report with every optional part filled, so a round trip covers each document type."""
    report = full_report(instance_id)
    latency = LatencyStats(count=5, mean_s=0.02, p50_s=0.02, p95_s=0.03, max_s=0.04)
    tokens = TokenStats(ttft=latency, itl=latency, output_tokens=48, output_tokens_per_s=4.8)
    interval = QuantileInterval(quantile=0.95, count=400, estimate_s=0.03, lower_s=0.028, slo_s=0.1)
    assert report.load_test is not None
    return replace(
        report,
        shapes=[
            replace(
                report.shapes[0],
                post_warm_baseline=latency,
                stable=True,
                payload_bytes=1024,
                error="http 500",
                prompt=PromptReport(target_tokens=512, achieved_tokens=510, counted_by="tokenize"),
            ),
            *report.shapes[1:],
        ],
        load_test=replace(
            report.load_test,
            per_shape={"bs1": latency},
            per_shape_errors={"bs1": {"timeout": 1}},
            tokens=tokens,
            per_shape_tokens={"bs1": tokens},
            stopped="converged",
            intervals={"p95": interval},
        ),
        diagnosis=Diagnosis(
            causes=[Cause(kind="global_init", seconds=0.9, evidence="bs1 0.9 s", mitigation="warm it")],
            startup=[StartupStep(name="load model", seconds=2.5, started_s=0.1)],
            startup_source="GET http://127.0.0.1:8000/v2/warmgate/startup",
            notes=["no worker ids"],
            warmed=[WarmedShape(batch_size=1, dims="3")],
        ),
    )


def test_a_full_report_round_trips_through_the_marker(tmp_path: Path) -> None:
    writer = StateWriter(tmp_path)
    writer.prepare()
    report = every_part_report(writer.instance_id)
    writer.write_ready(report)
    assert read_report(tmp_path / READY_FILE) == report
    # The file's format: indented, sorted keys, enums by value, every field present.
    text = (tmp_path / READY_FILE).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert '"judged_peak_bytes"' not in text and '"post_warm_baseline": null' in text
    assert json.loads((tmp_path / "status.json").read_text())["phase"] == "starting"


def test_numbers_are_written_as_their_field_types_say(tmp_path: Path) -> None:
    """Construction no longer coerces (pydantic did): the writer still writes a float field's int
    as a float, and a numpy scalar from the statistics as a plain number."""
    writer = StateWriter(tmp_path)
    writer.prepare()
    steady = LatencyStats(p95_s=np.float64(0.25))
    shape = ShapeReport(name="bs1", batch_size=np.int64(4), first_s=1, steady=steady)  # type: ignore[arg-type]
    writer.write_ready(replace(full_report(writer.instance_id), shapes=[shape]))
    written = json.loads((tmp_path / READY_FILE).read_text())["shapes"][0]
    assert (written["batch_size"], written["first_s"], written["steady"]["p95_s"]) == (4, 1.0, 0.25)
    assert isinstance(written["first_s"], float) and type(written["batch_size"]) is int
    wrong = replace(shape, name=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shapes\[0\]\.name"):
        writer.write_ready(replace(full_report(writer.instance_id), shapes=[wrong]))


def test_a_document_with_fields_it_does_not_know_is_read(tmp_path: Path) -> None:
    """An older probe reads a newer entrypoint's files."""
    document = to_json_dict(full_report("i"))
    document["from_the_future"] = {"x": [1, 2]}
    document["shapes"][0]["something_new"] = True
    document["gate"]["checks"][0]["weight"] = 2.0
    (tmp_path / READY_FILE).write_text(json.dumps(document))
    assert read_report(tmp_path / READY_FILE) == full_report("i")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["shapes"][0].update(batch_size="4"), "shapes.0.batch_size: Expected `int`, got `str`"),
        (lambda d: d["shapes"][1].pop("name"), "shapes.1.name: Field required"),
        (lambda d: d.pop("gate"), "(gate: Field required)"),
        (lambda d: d["load_test"]["errors"].update(timeout=1.5), "load_test.errors.*: Expected `int`"),
        (lambda d: d.update(shapes={}), "shapes: Expected `array`, got `object`"),
    ],
)
def test_a_wrong_or_missing_field_is_named_by_its_path(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], expected: str
) -> None:
    document = to_json_dict(full_report("i"))
    change(document)
    (tmp_path / READY_FILE).write_text(json.dumps(document))
    with pytest.raises(StateReadError) as raised:
        read_report(tmp_path / READY_FILE)
    assert str(raised.value).startswith(f"{tmp_path / READY_FILE}: not a valid report document (")
    assert expected in str(raised.value)


def test_a_non_finite_float_still_reads(tmp_path: Path) -> None:
    """json.dumps writes NaN and Infinity, which strict JSON refuses; the readers never did."""
    writer = StateWriter(tmp_path)
    writer.prepare()
    shape = ShapeReport(name="bs1", batch_size=1, first_s=float("inf"), first_to_steady_ratio=float("nan"))
    writer.write_ready(replace(full_report(writer.instance_id), shapes=[shape]))
    assert "Infinity" in (tmp_path / READY_FILE).read_text()
    read = read_report(tmp_path / READY_FILE).shapes[0]
    assert read.first_s == float("inf") and read.first_to_steady_ratio != read.first_to_steady_ratio
