"""Device facts read without touching CUDA: forking after CUDA initialisation breaks the children."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def gpu_count() -> int:
    """NVIDIA GPUs visible through NVML (no CUDA context); 0 when NVML or the driver is missing."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return 0
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # the library is absent or no driver: both mean no usable GPU
        return 0
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)
    if visible:
        count = min(count, len([v for v in visible.split(",") if v.strip()]))
    return count


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def gpu_identity() -> str:
    """The visible NVIDIA GPUs' names and compute capabilities through NVML, for cache keys
    (compiled kernels and engines are specific to them); "none" without a GPU or NVML."""
    if gpu_count() == 0:
        return "none"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # absent library or driver: no GPU to key on
        return "none"
    try:
        described = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            described.append(f"{name.decode() if isinstance(name, bytes) else name} sm_{major}{minor}")
        return "; ".join(described) or "none"
    except Exception:
        return "unknown"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)


def cpu_fingerprint() -> str:
    """The CPU model and instruction-set flags (Linux), else what the platform module knows.

    Optimised CPU graphs and compiled CPU kernels use instruction-set-specific code: part of keys.
    """
    import hashlib
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = text.split("\n\n", 1)[0]
    wanted = [line for line in first.splitlines() if line.split(":")[0].strip() in ("model name", "flags")]
    return hashlib.sha256("\n".join([platform.machine(), *wanted]).encode()).hexdigest()[:16]
