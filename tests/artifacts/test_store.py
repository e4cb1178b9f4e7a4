"""The artifact store on real directories and, for races, real processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path

import pytest

from warmgate.artifacts.store import MANIFEST, ArtifactStore, max_bytes_from, open_store

KEY = {"model": "abc", "runtime": "1.0", "cpu": "x86"}


def payload_dir(tmp_path: Path, name: str = "src", size: int = 100, files: int = 2) -> Path:
    source = tmp_path / name
    (source / "sub").mkdir(parents=True)
    for index in range(files):
        (source / "sub" / f"f{index}.bin").write_bytes(bytes([index]) * size)
    return source


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_publish_then_lookup_returns_the_verified_payload(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    assert store.lookup("kind", "model", KEY) is None
    entry = store.publish("kind", "model", KEY, payload_dir(tmp_path))
    assert entry is not None and entry.size == 200
    found = store.lookup("kind", "model", KEY)
    assert found is not None and found.path == entry.path
    assert (found.payload / "sub" / "f1.bin").read_bytes() == b"\x01" * 100
    manifest = json.loads((found.path / MANIFEST).read_text())
    assert manifest["key"] == KEY and manifest["kind"] == "kind" and manifest["size"] == 200
    assert sorted(manifest["files"]) == ["sub/f0.bin", "sub/f1.bin"]


def test_a_single_file_can_be_moved_in(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    file = tmp_path / "model.onnx"
    file.write_bytes(b"onnx")
    entry = store.publish("ort", "m", KEY, file, move=True)
    assert entry is not None and (entry.payload / "model.onnx").read_bytes() == b"onnx"
    assert not file.exists()


def test_first_writer_wins(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    first = store.publish("kind", "model", KEY, payload_dir(tmp_path, "a", size=10))
    second = store.publish("kind", "model", KEY, payload_dir(tmp_path, "b", size=20))
    assert first is not None and second is not None and first.path == second.path
    assert second.size == 20  # the first writer's payload stays
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no staging left


def test_grow_replaces_only_a_strict_subset(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "cache")
    store.publish("kind", "model", KEY, payload_dir(tmp_path, "one", files=1))
    same = store.publish("kind", "model", KEY, payload_dir(tmp_path, "other1", size=7, files=1), grow=True)
    assert same is not None and same.size == 100  # not a superset: kept
    grown = store.publish("kind", "model", KEY, payload_dir(tmp_path, "two", files=2), grow=True)
    assert grown is not None and grown.size == 200
    assert store.lookup("kind", "model", KEY) is not None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda e: (e / MANIFEST).unlink(), "corrupt: no manifest"),
        (lambda e: (e / MANIFEST).write_text("{not json"), "corrupt: unreadable manifest"),
        (
            lambda e: (e / "payload" / "sub" / "f0.bin").write_bytes(b"short"),
            "corrupt: sub/f0.bin has 5 bytes",
        ),
        (
            lambda e: (e / "payload" / "sub" / "f0.bin").write_bytes(b"\x07" * 100),
            "does not match its SHA-256",
        ),
        (lambda e: (e / "payload" / "sub" / "f1.bin").unlink(), "files differ from the manifest"),
    ],
)
def test_a_corrupt_entry_is_one_warning_then_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object, reason: str
) -> None:
    store = ArtifactStore(tmp_path / "cache")
    entry = store.publish("kind", "model", KEY, payload_dir(tmp_path))
    assert entry is not None
    damage(entry.path)  # type: ignore[operator]
    with caplog.at_level(logging.INFO, logger="warmgate.artifacts"):
        assert store.lookup("kind", "model", KEY) is None
    assert len(warnings_of(caplog)) == 1 and reason in warnings_of(caplog)[0]
    assert "building a fresh one" in warnings_of(caplog)[0]
    assert not entry.path.exists()
    assert store.publish("kind", "model", KEY, payload_dir(tmp_path, "again")) is not None
    assert store.lookup("kind", "model", KEY) is not None


def test_a_manifest_for_another_key_is_a_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path / "cache")
    entry = store.publish("kind", "model", KEY, payload_dir(tmp_path))
    assert entry is not None
    manifest = json.loads((entry.path / MANIFEST).read_text())
    manifest["key"]["runtime"] = "0.9"
    (entry.path / MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="warmgate.artifacts"):
        assert store.lookup("kind", "model", KEY) is None
    assert warnings_of(caplog) == [
        f"cache: ignoring kind entry {entry.path.name} (mismatch: written for another runtime); "
        "building a fresh one"
    ]


def test_a_miss_beside_entries_for_other_keys_says_what_differs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ArtifactStore(tmp_path / "cache")
    store.publish("kind", "model", {**KEY, "runtime": "0.9", "cpu": "arm"}, payload_dir(tmp_path))
    with caplog.at_level(logging.INFO, logger="warmgate.artifacts"):
        assert store.lookup("kind", "model", KEY) is None
        assert store.lookup("kind", "unrelated", KEY) is None  # no siblings: a quiet miss
    assert warnings_of(caplog) == [
        "cache: no kind entry for model matches this start (cached entries differ in cpu, runtime); "
        "building a fresh one"
    ]


def test_least_recently_used_entries_are_evicted_beyond_the_limit(tmp_path: Path) -> None:
    now = [1000.0]
    store = ArtifactStore(tmp_path / "cache", max_bytes=450, clock=lambda: now[0])
    paths = []
    for index in range(4):  # 200 bytes each
        key = {**KEY, "model": str(index)}
        entry = store.publish("kind", f"m{index}", key, payload_dir(tmp_path, f"s{index}"))
        assert entry is not None
        os.utime(entry.path, (1000 + index, 1000 + index))
        paths.append((f"m{index}", key, entry.path))
    # After each publish the total is cut back to 450 bytes: two entries of 200 survive.
    survivors = sorted(p.name for p in (tmp_path / "cache" / "artifacts" / "kind").iterdir())
    assert len(survivors) == 2
    assert paths[3][2].name in survivors  # the newest is never evicted by its own publish
    # A hit makes an entry recently used: the other one goes first.
    older, newer = sorted((p for p in paths if p[2].name in survivors), key=lambda p: p[2].stat().st_mtime)
    assert store.lookup("kind", older[0], older[1]) is not None  # touched now
    store.publish("kind", "m9", {**KEY, "model": "9"}, payload_dir(tmp_path, "s9"))
    left = {p.name for p in (tmp_path / "cache" / "artifacts" / "kind").iterdir()}
    assert older[2].name in left and newer[2].name not in left


def test_max_bytes_from_the_environment() -> None:
    assert max_bytes_from({"X": "1000"}, "X") == 1000
    assert max_bytes_from({}, "X") == 20 << 30
    assert max_bytes_from({"X": "lots"}, "X") == 20 << 30


def test_an_unwritable_store_is_a_miss_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the directory should be")
    store = ArtifactStore(blocker)
    assert store.lookup("kind", "model", KEY) is None
    assert store.publish("kind", "model", KEY, payload_dir(tmp_path)) is None


def _publish_in_child(root: str, source: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait(timeout=30)
    ArtifactStore(Path(root)).publish("kind", "model", KEY, Path(source))


def test_concurrent_writers_leave_one_valid_entry(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    sources = [payload_dir(tmp_path, f"w{i}", size=50_000 + i, files=8) for i in range(4)]
    children = [
        context.Process(target=_publish_in_child, args=(str(tmp_path / "cache"), str(s), barrier))
        for s in sources
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    kind_dir = tmp_path / "cache" / "artifacts" / "kind"
    assert len(list(kind_dir.iterdir())) == 1  # no staging or trash left behind
    entry = ArtifactStore(tmp_path / "cache").lookup("kind", "model", KEY)
    assert entry is not None
    sizes = {(entry.payload / "sub" / f"f{i}.bin").stat().st_size for i in range(8)}
    assert len(sizes) == 1 and sizes.pop() in {50_000 + i for i in range(4)}  # one writer's whole copy


def test_a_read_only_cache_is_read_after_the_writable_one_misses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    baked = ArtifactStore(tmp_path / "baked")
    entry = baked.publish("kind", "model", KEY, payload_dir(tmp_path))
    assert entry is not None
    store = ArtifactStore(tmp_path / "own", read_only=[tmp_path / "baked"])
    with caplog.at_level(logging.INFO, logger="warmgate.artifacts"):
        found = store.lookup("kind", "model", KEY)
    assert found is not None and found.path == entry.path
    assert any("(read-only " in r.getMessage() for r in caplog.records)
    # The writable cache wins once it has its own copy.
    own = store.publish("kind", "model", KEY, payload_dir(tmp_path, "own-src"))
    assert own is not None and store.lookup("kind", "model", KEY) == own


def test_a_corrupt_read_only_entry_is_one_warning_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = ArtifactStore(tmp_path / "baked").publish("kind", "model", KEY, payload_dir(tmp_path))
    assert entry is not None
    (entry.path / "payload" / "sub" / "f0.bin").write_bytes(b"short")
    store = ArtifactStore(tmp_path / "own", read_only=[tmp_path / "baked"])
    with caplog.at_level(logging.INFO, logger="warmgate.artifacts"):
        assert store.lookup("kind", "model", KEY) is None
    assert len(warnings_of(caplog)) == 1 and "in read-only" in warnings_of(caplog)[0]
    assert entry.path.exists()  # not ours to clean


def test_open_store_reads_the_exported_cache_dir_when_it_is_another(tmp_path: Path) -> None:
    env = {"WARMGATE_CACHE_DIR": str(tmp_path / "volume"), "WARMGATE_CACHE_MAX_BYTES": "1234"}
    store = open_store(tmp_path / "fallback", env)
    assert store.read_only == (tmp_path / "volume" / "artifacts",) and store.max_bytes == 1234
    assert open_store(tmp_path / "volume", env).read_only == ()
