"""Memory evidence: the server's process tree (psutil), the container limit (cgroup v2 or v1) and
GPU memory through NVML.

GPU memory is read only through NVML (nvidia-ml-py): importing torch or creating a CUDA context
in PID 1 would break forked server workers and take GPU memory of its own. No GPU, no driver or
no nvidia-ml-py all mean "no GPU entries", never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from warmgate.state import GpuMemory, MemoryReport

log = logging.getLogger("warmgate.engine.memory")

# cgroup v1 reports "no limit" as a huge page-aligned number (2^63 rounded down to a page).
# Anything above this is no limit.
CGROUP_V1_UNLIMITED = 1 << 62


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    used_bytes: int
    total_bytes: int


GpuReader = Callable[[], list[GpuSample]]


# ---- the container's limit -------------------------------------------------------------------


def cgroup_memory_limit(
    proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> tuple[int | None, str]:
    """The tightest memory limit over our cgroup and its ancestors, and where it came from."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, ""
    v2_path: str | None = None
    v1_path: str | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    if v1_path is not None and (cgroup_root / "memory").is_dir():
        return _tightest(cgroup_root / "memory", v1_path, "memory.limit_in_bytes", "cgroup v1")
    if v2_path is not None and (cgroup_root / "cgroup.controllers").exists():
        return _tightest(cgroup_root, v2_path, "memory.max", "cgroup v2")
    return None, ""


def _tightest(mount: Path, path: str, filename: str, label: str) -> tuple[int | None, str]:
    # Without a cgroup namespace /proc/self/cgroup shows the full path; inside one it shows "/"
    # and the mount's root is our own cgroup. Walk from the leaf up to the mount root.
    leaf = mount / path.lstrip("/")
    if not leaf.is_dir():
        leaf = mount
    best: tuple[int | None, str] = (None, "")
    directory = leaf
    while True:
        limit = _read_limit(directory / filename)
        if limit is not None and (best[0] is None or limit < best[0]):
            best = (limit, f"{label} {directory / filename}")
        if directory == mount or mount not in directory.parents:
            return best
        directory = directory.parent


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= CGROUP_V1_UNLIMITED else value


# ---- the server's process tree ---------------------------------------------------------------


def tree_memory(pid: int) -> tuple[int, int | None]:
    """(sum of RSS, sum of PSS or None) over a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, None
    rss = 0
    pss: int | None = 0
    for process in processes:
        try:
            rss += process.memory_info().rss
            if pss is not None:
                # smaps_rollup: the kernel sums the page tables for us; fast since Linux 4.14.
                pss += getattr(process.memory_full_info(), "pss", 0)
        except psutil.AccessDenied:
            pss = None
        except psutil.Error:  # exited between listing and reading
            continue
    return rss, pss


# ---- GPUs ------------------------------------------------------------------------------------


class Nvml:
    """NVML opened lazily; `read` returns nothing when there is no usable GPU."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[tuple[int, str, Any]] = []
        self._opened = False

    def open(self) -> None:
        self._opened = True
        try:
            import pynvml  # lazily: only hosts with a GPU need it
        except ImportError:
            log.debug("nvidia-ml-py not installed: no GPU memory")
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError and friends: no driver, no GPU
            log.debug("NVML unavailable: %s", exc)
            return
        self._nvml = pynvml
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                name = name.decode() if isinstance(name, bytes) else str(name)
                self._handles.append((index, name, handle))
        except Exception as exc:
            log.warning("NVML: cannot list GPUs: %s", exc)
            self._handles = []

    def read(self) -> list[GpuSample]:
        if not self._opened:
            self.open()
        samples = []
        for index, name, handle in self._handles:
            try:
                info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU falling off the bus must not fail the warmup
                log.debug("NVML: GPU %d unreadable: %s", index, exc)
                continue
            samples.append(GpuSample(index, name, int(info.used), int(info.total)))
        return samples

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = []


# ---- sampling --------------------------------------------------------------------------------


@dataclass
class MemoryPeaks:
    rss: int | None = None
    pss: int | None = None
    samples: int = 0
    gpus: dict[int, GpuMemory] = field(default_factory=dict)

    def add(self, rss: int, pss: int | None, gpus: list[GpuSample]) -> None:
        self.samples += 1
        if rss:
            self.rss = max(self.rss or 0, rss)
        if pss:
            self.pss = max(self.pss or 0, pss)
        for gpu in gpus:
            known = self.gpus.get(gpu.index)
            if known is None or gpu.used_bytes > known.peak_used_bytes:
                self.gpus[gpu.index] = GpuMemory(
                    index=gpu.index,
                    name=gpu.name,
                    peak_used_bytes=gpu.used_bytes,
                    total_bytes=gpu.total_bytes,
                )


class MemorySampler:
    """Samples the server's tree (and the GPUs) every interval while the warmup and load run.

    Reading /proc and NVML blocks, so each sample runs in a worker thread: the event loop that
    times the load test is never stalled by a slow smaps_rollup of a large process.
    """

    def __init__(self, pid: int | None, interval_s: float, gpu_reader: GpuReader | None = None) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.gpu_reader = gpu_reader
        self.peaks = MemoryPeaks()

    def sample(self) -> None:
        rss, pss = tree_memory(self.pid) if self.pid is not None else (0, None)
        gpus = self.gpu_reader() if self.gpu_reader is not None else []
        self.peaks.add(rss, pss, gpus)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryPeaks]:
        await asyncio.to_thread(self.sample)
        task = asyncio.create_task(self._loop(), name="memory-sampler")
        try:
            yield self.peaks
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # One last sample: a phase shorter than the interval still gets measured at its end.
            await asyncio.to_thread(self.sample)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.sample)


def memory_report(
    peaks: MemoryPeaks, limit: int | None, source: str, headroom_fraction: float
) -> MemoryReport:
    return MemoryReport(
        peak_rss_bytes=peaks.rss,
        peak_pss_bytes=peaks.pss,
        samples=peaks.samples,
        limit_bytes=limit,
        limit_source=source,
        headroom_fraction=headroom_fraction,
        gpus=[peaks.gpus[i] for i in sorted(peaks.gpus)],
    )
