"""State files: atomic writes, stale markers, unusable directories, corrupt documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.fulldisk import fill, small_filesystem
from warmgate.state import (
    LatencyStats,
    Phase,
    PromptReport,
    Report,
    StateError,
    StateReadError,
    StateWriter,
    TokenStats,
    atomic_write_json,
    read_report,
    read_status,
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
        writer.write_ready(Report.model_construct())
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

    shape = report.shapes[0].model_copy(
        update={"prompt": PromptReport(target_tokens=512, achieved_tokens=510)}
    )
    tokens = TokenStats(ttft=LatencyStats(count=3, p95_s=0.2), output_tokens=48, output_tokens_per_s=4.8)
    load = report.load_test.model_copy(update={"tokens": tokens, "per_shape_tokens": {"bs1": tokens}})
    new = report.model_copy(update={"shapes": [shape], "load_test": load})
    (tmp_path / "new.json").write_text(new.model_dump_json())
    assert read_report(tmp_path / "new.json") == new
