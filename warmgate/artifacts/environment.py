"""The environment `warmgate run` adds for the server it starts, so compile caches land in the
shared cache directory (a volume that outlives the pod) instead of the container's /tmp.

Only variables the user has not set are added: an explicit setting always wins. Nothing here has a
side effect on import, so the chart's tests can compare its list with what they render.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_ENV = "WARMGATE_CACHE_DIR"
MAX_BYTES_ENV = "WARMGATE_CACHE_MAX_BYTES"


def server_environment(cache_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The cache variables for a server, per family, minus those already set in `environ`.

    Not exported: HF_HOME / HF_HUB_CACHE / TORCH_HOME. They also move downloaded weights and
    tokenizers, which is a decision about where models live, not about warm artifacts.
    """
    wanted = {
        # warmgate serve keeps its own keyed entries (ORT optimised model, TensorRT engines,
        # Inductor caches) under this directory.
        CACHE_ENV: str(cache_dir),
        # torch.compile (Inductor): FX graph and AOTAutograd caches skip most of a recompile;
        # Triton's kernel cache skips the GPU kernel builds.
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        # vLLM keeps its torch.compile cache under its cache root.
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        # The CUDA driver's JIT cache (PTX compiled for this GPU); the default 256 MiB is small
        # for large kernels sets.
        "CUDA_CACHE_PATH": str(cache_dir / "cuda"),
        "CUDA_CACHE_MAXSIZE": str(4 << 30),
        # ONNX Runtime's TensorRT provider in third-party servers (provider options win over these).
        "ORT_TENSORRT_ENGINE_CACHE_ENABLE": "1",
        "ORT_TENSORRT_CACHE_PATH": str(cache_dir / "ort-tensorrt"),
    }
    return {name: value for name, value in wanted.items() if name not in environ}


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The server's whole environment when a cache directory is configured, else None (inherit).

    Without WARMGATE_CACHE_DIR nothing is added: where a cache lives is a deployment decision
    (a volume), and a directory inside the container dies with the pod anyway.
    """
    env = os.environ if environ is None else environ
    if not env.get(CACHE_ENV):
        return None
    cache_dir = Path(env[CACHE_ENV]).absolute()
    return {**env, **server_environment(cache_dir, env)}
