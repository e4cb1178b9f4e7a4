"""Memory evidence: cgroup limits from real files, a real process tree, NVML absent or present."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from warmgate.entrypoint.engine.memory import GpuSample, MemorySampler, Nvml, cgroup_memory_limit, tree_memory

GIB = 1024**3


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_takes_the_tightest_limit_up_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "kubepods/memory.max", f"{4 * GIB}\n")
    write(root / "kubepods/pod1/memory.max", f"{GIB}\n")
    write(root / "kubepods/pod1/ctr/memory.max", "max\n")
    write(tmp_path / "self-cgroup", "0::/kubepods/pod1/ctr\n")
    limit, source = cgroup_memory_limit(tmp_path / "self-cgroup", root)
    assert limit == GIB
    assert source == f"cgroup v2 {root}/kubepods/pod1/memory.max"


def test_cgroup_v2_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "memory\n")
    write(root / "memory.max", "536870912\n")
    write(tmp_path / "self-cgroup", "0::/\n")
    assert cgroup_memory_limit(tmp_path / "self-cgroup", root) == (536870912, f"cgroup v2 {root}/memory.max")


def test_cgroup_v1_and_its_unlimited_sentinel(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "memory/docker/memory.limit_in_bytes", "268435456\n")
    write(root / "memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")
    # A hybrid host lists the v2 hierarchy too; the memory controller is in v1.
    write(tmp_path / "self-cgroup", "4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n")
    limit, source = cgroup_memory_limit(tmp_path / "self-cgroup", root)
    assert limit == 268435456
    assert source.startswith("cgroup v1 ")

    write(root / "memory/docker/memory.limit_in_bytes", "9223372036854771712\n")
    assert cgroup_memory_limit(tmp_path / "self-cgroup", root) == (None, "")


def test_no_cgroup_information_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "missing", tmp_path) == (None, "")


def test_this_host_answers_without_error() -> None:
    limit, source = cgroup_memory_limit()
    assert limit is None or (limit > 0 and source.startswith("cgroup v"))


@pytest.fixture
def process_tree() -> Iterator[psutil.Process]:
    """A parent with one child holding 20 MB; closing the parent's stdin ends both."""
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import sys; x = bytearray(20_000_000); print(flush=True); sys.stdin.read()'], "
        "stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "child.stdin.close()\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None and parent.stdin is not None
    try:
        assert parent.stdout.readline() == "ready\n"
        yield psutil.Process(parent.pid)
    finally:
        parent.stdin.close()
        parent.wait(timeout=10)
        parent.stdout.close()


def test_tree_memory_sums_the_whole_process_tree(process_tree: psutil.Process) -> None:
    [child] = process_tree.children()
    assert child.memory_info().rss > 20_000_000
    rss, pss = tree_memory(process_tree.pid)
    assert rss >= process_tree.memory_info().rss + 20_000_000
    assert pss is None or 20_000_000 < pss <= rss


def test_tree_memory_of_a_gone_process_is_zero() -> None:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait(timeout=10)
    assert tree_memory(done.pid) == (0, None)


def test_nvml_without_a_gpu_is_no_entries_not_an_error() -> None:
    nvml = Nvml()
    try:
        samples = nvml.read()
    finally:
        nvml.close()
    # On a GPU host there are entries; elsewhere none. Never an exception.
    assert all(sample.total_bytes > 0 for sample in samples)


async def test_sampler_keeps_peaks_and_samples_at_the_end() -> None:
    readings = iter([[GpuSample(0, "g", 5, 100)], [GpuSample(0, "g", 70, 100)]])

    def gpus() -> list[GpuSample]:
        return next(readings, [GpuSample(0, "g", 10, 100)])

    sampler = MemorySampler(None, interval_s=60, gpu_reader=gpus)
    async with sampler.running() as peaks:
        pass
    # One sample when it started, one when the phase ended (even though the interval is long).
    assert peaks.samples == 2
    assert peaks.gpus[0].peak_used_bytes == 70
