"""In-process warmup: run synthetic batches of each size before the worker reports ready."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from warmgate.modelserver.runtime.base import ModelInfo, Runtime
from warmgate.tensors import FLOAT_TYPES, INTEGER_TYPES, NUMPY_DTYPES

# Size used for dynamic non-batch dims (sequence lengths): long enough to be representative.
DYNAMIC_DIM = 16
TEXT_WORDS = 16
_WORDS = "the quick brown fox jumps over a lazy dog while warm servers answer fast".split()  # noqa: SIM905


@dataclass(frozen=True)
class WarmupResult:
    batch_size: int
    calls: int
    first_s: float
    steady_s: float


def synthetic_inputs(info: ModelInfo, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    for spec in info.inputs:
        dims = [DYNAMIC_DIM if d == -1 else d for d in spec.shape]
        if info.batched:
            dims[0] = batch_size
        if spec.datatype == "BYTES":
            count = int(np.prod(dims))
            texts = [" ".join(rng.choice(_WORDS, TEXT_WORDS)).encode() for _ in range(count)]
            inputs[spec.name] = np.array(texts, dtype=object).reshape(dims)
        elif spec.datatype in FLOAT_TYPES:
            inputs[spec.name] = rng.standard_normal(dims).astype(NUMPY_DTYPES[spec.datatype])
        elif spec.datatype in INTEGER_TYPES:
            # Small values: valid token ids, class indices and lengths for most models.
            inputs[spec.name] = rng.integers(0, 100, dims).astype(NUMPY_DTYPES[spec.datatype])
        else:
            inputs[spec.name] = rng.integers(0, 2, dims).astype(bool)
    return inputs


def warm_up(
    runtime: Runtime,
    batch_sizes: Sequence[int],
    count: int,
    clock: Callable[[], float] = time.perf_counter,
    seed: int = 0,
) -> list[WarmupResult]:
    info = runtime.info()
    rng = np.random.default_rng(seed)
    sizes = batch_sizes if info.batched else [1]
    results = []
    for batch_size in sizes:
        inputs = synthetic_inputs(info, batch_size, rng)
        latencies = []
        for _ in range(max(1, count)):
            start = clock()
            runtime.infer(inputs)
            latencies.append(clock() - start)
        steady = statistics.median(latencies[1:]) if len(latencies) > 1 else latencies[0]
        results.append(WarmupResult(batch_size, len(latencies), latencies[0], steady))
    return results
