"""Whether this machine can run the CUDA tests; the reason is shown when they skip."""

from __future__ import annotations

import pytest


def cuda_skip_reason() -> str | None:
    from warmgate.modelserver.runtime import devices

    if devices.gpu_count() == 0:
        return "no NVIDIA GPU visible through NVML on this machine"
    return None


def require_ort_cuda() -> None:
    reason = cuda_skip_reason()
    if reason is None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            reason = "this onnxruntime build has no CUDAExecutionProvider"
    if reason:
        pytest.skip(reason)


def require_torch_cuda() -> None:
    reason = cuda_skip_reason()
    if reason is None:
        import torch

        if not torch.cuda.is_available():
            reason = f"torch {torch.__version__} cannot use CUDA here"
    if reason:
        pytest.skip(reason)
