"""`warmgate serve`'s keyed caches on real processes: filled when empty, used when warm, a corrupt or
mismatched entry ignored with one warning and rebuilt, concurrent fillers, torch.compile's caches."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.modelserver.procs import ServerProcess
from warmgate.artifacts.store import MANIFEST, ArtifactStore

StartServer = Callable[..., ServerProcess]
ORT_KIND = "ort-optimized"
TORCH_KIND = "torch-inductor"


def serve(model: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    # Only this test's cache: a WARMGATE_CACHE_DIR of the caller's would be read as a second source.
    base = {
        k: v for k, v in os.environ.items() if k not in ("WARMGATE_CACHE_DIR", "WARMGATE_CACHE_MAX_BYTES")
    }
    return ServerProcess(
        ["--model", str(model), "--port", "0", "--host", "127.0.0.1", "--cache-dir", str(cache), *args],
        env={**base, **(env or {})},
    )


def stop(server: ServerProcess) -> str:
    server.signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    return server.output


def entries(cache: Path, kind: str) -> list[Path]:
    directory = cache / "artifacts" / kind
    return sorted(directory.iterdir()) if directory.is_dir() else []


def only_entry(cache: Path, kind: str) -> Path:
    found = entries(cache, kind)
    assert len(found) == 1, found  # no staging or trash directories left behind either
    return found[0]


def cache_lines(output: str, level: str = "") -> list[str]:
    return [line for line in output.splitlines() if "cache:" in line and level in line]


async def infer(url: str, batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    timeout = aiohttp.ClientTimeout(total=240)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{url}/v2/models/demo/infer", json=body) as response,
    ):
        assert response.status == 200, await response.text()


def test_empty_cache_fills_and_a_warm_one_is_used(tmp_path: Path, demo_onnx: Path) -> None:
    cache = tmp_path / "cache"
    first = serve(demo_onnx, cache, "--workers", "2")
    try:
        first.wait_ready()
        output = stop(first)
    finally:
        first.close()
    assert len(re.findall(r"cache: stored ort-optimized entry", output)) == 1
    entry = only_entry(cache, ORT_KIND)
    written = (entry / "payload" / "model.onnx").stat().st_mtime_ns

    second = serve(demo_onnx, cache, "--workers", "2")
    try:
        second.wait_ready()
        output = stop(second)
    finally:
        second.close()
    assert "cache: hit ort-optimized entry " + entry.name in output
    assert "cache: stored" not in output and not cache_lines(output, "WARNING")
    assert (entry / "payload" / "model.onnx").stat().st_mtime_ns == written  # reused, not rewritten


def truncate_payload(entry: Path) -> str:
    model = entry / "payload" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    return "corrupt: model.onnx has 1000 bytes"


def other_runtime_version(entry: Path) -> str:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["key"]["ort"] = "0.0.0"
    (entry / MANIFEST).write_text(json.dumps(manifest))
    return "mismatch: written for another ort"


def unloadable_payload(entry: Path) -> str:
    """Intact by its manifest, but not a model: what a broken writer could store."""
    model = entry / "payload" / "model.onnx"
    size = model.stat().st_size
    model.write_bytes(b"\0" * size)
    manifest = json.loads((entry / MANIFEST).read_text())
    from warmgate.artifacts.store import file_digest

    manifest["files"]["model.onnx"] = [size, file_digest(model)]
    (entry / MANIFEST).write_text(json.dumps(manifest))
    return "ONNX Runtime cannot load it"


@pytest.mark.parametrize("damage", [truncate_payload, other_runtime_version, unloadable_payload])
def test_a_corrupt_or_mismatched_entry_is_one_warning_and_rebuilt(
    tmp_path: Path, demo_onnx: Path, damage: Callable[[Path], str]
) -> None:
    cache = tmp_path / "cache"
    filler = serve(demo_onnx, cache, "--workers", "1")
    try:
        filler.wait_ready()
        stop(filler)
    finally:
        filler.close()
    entry = only_entry(cache, ORT_KIND)
    reason = damage(entry)

    server = serve(demo_onnx, cache, "--workers", "2")
    try:
        server.wait_ready()
        output = stop(server)
    finally:
        server.close()
    warnings = cache_lines(output, "WARNING")
    assert len(warnings) == 1, output
    assert reason in warnings[0] and "building a fresh one" in warnings[0]
    assert "cache: stored ort-optimized entry" in output
    rebuilt = only_entry(cache, ORT_KIND)
    assert ArtifactStore(cache).lookup(
        ORT_KIND, demo_onnx.stem, json.loads((rebuilt / MANIFEST).read_text())["key"]
    )


def test_two_servers_filling_one_cache_at_once_leave_one_valid_entry(tmp_path: Path, demo_onnx: Path) -> None:
    cache = tmp_path / "cache"
    servers = [serve(demo_onnx, cache, "--workers", "1") for _ in range(2)]
    try:
        waiters = [threading.Thread(target=s.wait_ready) for s in servers]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join(timeout=90)
        outputs = [stop(s) for s in servers]
    finally:
        for server in servers:
            server.close()
    assert all(s.url for s in servers)
    stored = sum(o.count("cache: stored ort-optimized") for o in outputs)
    assert stored >= 1 and not any(cache_lines(o, "WARNING") for o in outputs)
    entry = only_entry(cache, ORT_KIND)
    key = json.loads((entry / MANIFEST).read_text())["key"]
    assert ArtifactStore(cache).lookup(ORT_KIND, demo_onnx.stem, key) is not None


@pytest.fixture(scope="session")
def demo_export(cache_dir: Path) -> Path:
    from warmgate.modelserver import demo

    return demo.ensure_export(cache_dir)


@pytest.mark.timeout(600)
async def test_torch_compile_caches_are_stored_and_serve_the_next_start(
    tmp_path: Path, demo_export: Path
) -> None:
    cache = tmp_path / "cache"
    cold = serve(demo_export, cache, "--compile", "--threads", str(min(2, os.cpu_count() or 1)))
    try:
        url = cold.wait_ready()
        await infer(url, 1)
        await infer(url, 4)
        # Stored off the request path once compiles go quiet (and at the latest on shutdown).
        output = stop(cold)
    finally:
        cold.close()
    assert re.search(r"cache: (stored|grew) torch-inductor entry", output), output
    entry = only_entry(cache, TORCH_KIND)
    manifest = json.loads((entry / MANIFEST).read_text())
    assert any(name.startswith("inductor/") for name in manifest["files"])

    warm = serve(demo_export, cache, "--compile", "--threads", str(min(2, os.cpu_count() or 1)))
    try:
        url = warm.wait_ready()
        await infer(url, 1)
        await infer(url, 4)
        output = stop(warm)
    finally:
        warm.close()
    assert f"cache: hit torch-inductor entry {entry.name}" in output
    # Every compile of the second start was answered from the stored FX graph cache: Inductor
    # wrote nothing new, so there was nothing to store.
    assert not re.search(r"cache: (stored|grew) torch-inductor", output), output
    assert not cache_lines(output, "WARNING")


def test_no_compile_cache_leaves_the_store_alone(tmp_path: Path, demo_onnx: Path) -> None:
    cache = tmp_path / "cache"
    server = serve(demo_onnx, cache, "--no-optimized-cache")
    try:
        server.wait_ready()
        output = stop(server)
    finally:
        server.close()
    assert entries(cache, ORT_KIND) == [] and not cache_lines(output)


def test_a_read_only_cache_volume_is_read_beside_the_servers_own(tmp_path: Path, demo_onnx: Path) -> None:
    """An image volume a build filled is read-only: the server writes elsewhere (its --cache-dir
    or the temp fallback) but reads the entries under $WARMGATE_CACHE_DIR."""
    baked = tmp_path / "baked"
    filler = serve(demo_onnx, baked, "--workers", "1")
    try:
        filler.wait_ready()
        stop(filler)
    finally:
        filler.close()
    entry = only_entry(baked, ORT_KIND)
    server = serve(demo_onnx, tmp_path / "own", env={"WARMGATE_CACHE_DIR": str(baked)})
    try:
        server.wait_ready()
        output = stop(server)
    finally:
        server.close()
    assert f"cache: hit ort-optimized entry {entry.name} (read-only {baked})" in output
    assert "cache: stored" not in output and not cache_lines(output, "WARNING")
    assert entries(tmp_path / "own", ORT_KIND) == []
