"""ONNX Runtime: providers from config, the providers really in use reported, an optimised-model cache.

`RUNTIME` at the bottom declares it to the registry. onnxruntime and numpy are imported inside the
functions that use them: the CLI imports this module to read the declaration.
"""

from __future__ import annotations

import argparse
import ctypes.util
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from warmgate.artifacts.store import ArtifactStore, Entry, file_digest, key_digest, open_store
from warmgate.modelserver.runtime import devices
from warmgate.modelserver.runtime.base import (
    InferenceError,
    ModelInfo,
    ModelLoadError,
    Runtime,
    RuntimeSpec,
    RuntimeType,
    TensorSpec,
    cuda_index,
    first_line,
    is_cuda_device,
)
from warmgate.modelserver.trace import startup_step

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

GraphOptimization = Literal["disable", "basic", "extended", "all"]
CudnnConvAlgoSearch = Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"]


@dataclass(frozen=True)
class OnnxOptions:
    # Execution providers by short name (tensorrt, cuda, cpu); empty means derived from the device.
    providers: tuple[str, ...] = ()
    graph_optimization: GraphOptimization = "all"
    # Where optimised models are cached; None disables the cache.
    optimized_cache_dir: Path | None = None
    # ORT's default EXHAUSTIVE benchmarks every conv algorithm on the first call of each shape: the
    # best steady state, the slowest first call. Warmup pays it; HEURISTIC avoids most of it.
    cudnn_conv_algo_search: CudnnConvAlgoSearch = "EXHAUSTIVE"


TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_NAMES = {"tensorrt": TENSORRT, "cuda": CUDA, "cpu": CPU}
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})
# Concurrent runs per worker on a GPU: lets one batch's host copies overlap another's kernels.
GPU_CONCURRENCY = 2

# ONNX's tensor type strings as ONNX Runtime reports them in NodeArg.type.
ONNX_TYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class OnnxRuntime(Runtime):
    def __init__(self, spec: RuntimeSpec, session: Any, providers: tuple[str, ...]) -> None:
        self._spec = spec
        self._session = session
        used = tuple(session.get_providers())
        self._info = _describe(spec, session, used)
        self._concurrency = spec.concurrency or (GPU_CONCURRENCY if GPU_PROVIDERS & set(used) else 1)
        self._string_inputs = {t.name for t in self._info.inputs if t.datatype == "BYTES"}
        self._output_names = [t.name for t in self._info.outputs]
        self.requested_providers = providers

    def info(self) -> ModelInfo:
        return self._info

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for name, array in inputs.items():
            # ORT's string tensors take str elements; the protocol hands BYTES over as bytes.
            feeds[name] = _to_str_array(array) if name in self._string_inputs else array
        try:
            # InferenceSession.run is thread-safe: one session serves every executor thread.
            results = self._session.run(self._output_names, feeds)
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise InferenceError(first_line(exc)) from exc
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None


def prepare(spec: RuntimeSpec) -> Runtime | None:
    """Before fork: build the optimised-model cache so each worker's session skips graph optimisation.

    The session is dropped again (its intra-op threads would not survive fork), so this returns None.
    Skipped for GPU providers: creating a CUDA session here would put a CUDA context in the parent.
    """
    providers = resolve_providers(spec)
    if GPU_PROVIDERS & set(providers):
        return None
    cache = _optimized_cache(spec, providers)
    if cache is not None and cache.lookup() is None:
        _create_session(spec, providers, cache, looked_up=True)
    return None


def load(spec: RuntimeSpec) -> OnnxRuntime:
    providers = resolve_providers(spec)
    session = _create_session(spec, providers)
    used = tuple(session.get_providers())
    wanted_gpu = GPU_PROVIDERS & set(providers)
    if wanted_gpu and not GPU_PROVIDERS & set(used):
        message = (
            f"{spec.model_path}: ONNX Runtime fell back to CPU (asked for {', '.join(providers)}, "
            f"running on {', '.join(used)}): CUDA or cuDNN libraries did not load"
        )
        if spec.require_gpu:
            raise ModelLoadError(message)
        log.warning("%s", message)
    elif spec.require_gpu and not wanted_gpu:
        raise ModelLoadError(f"{spec.model_path}: --require-gpu, but no GPU is visible to ONNX Runtime")
    return OnnxRuntime(spec, session, providers)


def resolve_providers(spec: RuntimeSpec) -> tuple[str, ...]:
    """The providers to ask for, best first; decided without creating a CUDA context."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    requested = _options(spec).providers
    if requested:
        wanted = [PROVIDER_NAMES[p] for p in requested]
    elif spec.device == "cpu":
        wanted = [CPU]
    elif is_cuda_device(spec.device):
        wanted = [CUDA, CPU]
    elif devices.gpu_count() > 0:
        # TensorRT only where its libraries are installed: otherwise ORT logs errors on every start.
        wanted = ([TENSORRT] if ctypes.util.find_library("nvinfer") else []) + [CUDA, CPU]
    else:
        wanted = [CPU]
    missing = [p for p in wanted if p not in available]
    if missing and (requested or is_cuda_device(spec.device)):
        message = f"this onnxruntime build lacks {', '.join(missing)} (has {', '.join(sorted(available))})"
        if spec.require_gpu or CPU in missing:
            raise ModelLoadError(message)
        log.warning("%s", message)
    chosen = tuple(p for p in wanted if p in available)
    if not chosen:
        raise ModelLoadError(f"none of the requested ONNX Runtime providers is available: {wanted}")
    return chosen


def _create_session(
    spec: RuntimeSpec,
    providers: tuple[str, ...],
    cache: OptimizedModelCache | None = None,
    *,
    looked_up: bool = False,
) -> Any:
    """A session; with a cache, from the cached optimised model when one matches, else optimising
    the model and storing the result. `looked_up`: the caller already missed (no second lookup,
    no second warning)."""
    import onnxruntime as ort

    if cache is None and not looked_up:
        cache = _optimized_cache(spec, providers)
    entry = None if cache is None or looked_up else cache.lookup()
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec.threads
    # One batch at a time per run; parallelism comes from intra-op threads and the server's executor.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, _OPT_LEVELS[_options(spec).graph_optimization]
    )
    model_path = spec.model_path
    staging: Path | None = None
    if entry is not None:
        # Already optimised for exactly this ORT, provider set and CPU: skip the optimiser.
        model_path = entry.payload / OPTIMIZED_FILE
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif cache is not None:
        staging = Path(tempfile.mkdtemp(prefix="warmgate-ort-"))
        options.optimized_model_filepath = str(staging / OPTIMIZED_FILE)
        # The serialiser warns that NCHWc layouts are CPU-specific: the cache key includes the CPU.
        options.log_severity_level = 3
    # The start-up trace says whether this worker paid the graph optimisation or loaded a cached
    # optimised model: the difference a cache miss makes to a start.
    how = "cached optimised model" if entry is not None else "graph optimisation"
    try:
        try:
            with startup_step("session build", f"{how}, {', '.join(providers)}"):
                session = ort.InferenceSession(
                    str(model_path),
                    sess_options=options,
                    providers=list(providers),
                    provider_options=[_provider_options(spec, p) for p in providers],
                )
        except Exception as exc:
            if entry is not None and cache is not None:
                # Intact by its manifest but unloadable (written by a broken build?): never a failed
                # start because of a cache. One warning, the entry goes, a fresh optimisation.
                # Workers that loaded the same entry at once: the one that removes it says so.
                report = log.warning if cache.discard(entry) else log.info
                report(
                    "cache: ignoring %s entry %s (ONNX Runtime cannot load it: %s); building a fresh one",
                    ORT_OPTIMIZED,
                    entry.path.name,
                    first_line(exc),
                )
                return _create_session(spec, providers, cache, looked_up=True)
            raise ModelLoadError(
                f"{spec.model_path}: ONNX Runtime cannot load the model: {first_line(exc)}"
            ) from None
        if staging is not None and cache is not None:
            written = staging / OPTIMIZED_FILE
            # Published only complete (a rename of a whole entry): concurrent workers or a crash
            # never leave half a model cached.
            if written.is_file() and written.stat().st_size > 0:
                cache.publish(written)
        return session
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _provider_options(spec: RuntimeSpec, provider: str) -> dict[str, str]:
    device_id = str(cuda_index(spec.device)) if is_cuda_device(spec.device) else "0"
    if provider == CUDA:
        return {"device_id": device_id, "cudnn_conv_algo_search": _options(spec).cudnn_conv_algo_search}
    if provider == TENSORRT:
        options = {"device_id": device_id}
        cache_dir = _options(spec).optimized_cache_dir
        if cache_dir is not None:
            # TensorRT engines take seconds to minutes to build: cache them beside the ORT cache.
            engines = _tensorrt_cache_dir(spec, cache_dir)
            engines.mkdir(parents=True, exist_ok=True)
            options.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(engines),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(engines),
            )
        return options
    return {}


_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


ORT_OPTIMIZED = "ort-optimized"
OPTIMIZED_FILE = "model.onnx"


@dataclass(frozen=True)
class OptimizedModelCache:
    """The keyed store entry for one model's optimised graph (see warmgate/artifacts/store.py)."""

    store: ArtifactStore
    label: str
    key: dict[str, str]

    def lookup(self) -> Entry | None:
        return self.store.lookup(ORT_OPTIMIZED, self.label, self.key)

    def publish(self, file: Path) -> None:
        self.store.publish(ORT_OPTIMIZED, self.label, self.key, file, move=True)

    def discard(self, entry: Entry) -> bool:
        return self.store.remove(entry.path)


def _optimized_cache(spec: RuntimeSpec, providers: tuple[str, ...]) -> OptimizedModelCache | None:
    """The optimised model's cache entry, keyed so that a stale one is never loaded.

    The key covers the model's bytes, the ORT version, the provider list, the optimisation level and
    the CPU (optimised CPU graphs use instruction-set-specific layouts). TensorRT compiles its
    partitions into engines, which ORT cannot serialise into a model file: no cache there.
    """
    directory = _options(spec).optimized_cache_dir
    if directory is None or TENSORRT in providers or _options(spec).graph_optimization == "disable":
        return None
    import onnxruntime as ort

    key = {
        "model": _file_digest(spec.model_path),
        "ort": ort.__version__,
        "providers": ",".join(providers),
        "level": _options(spec).graph_optimization,
        "cpu": devices.cpu_fingerprint(),
    }
    store = open_store(directory, os.environ)
    return OptimizedModelCache(store, spec.model_path.stem, key)


def _cache_path(spec: RuntimeSpec, providers: tuple[str, ...]) -> Path | None:
    """Where the optimised model's entry lives for these providers (None: not cached)."""
    cache = _optimized_cache(spec, providers)
    return None if cache is None else cache.store.entry_path(ORT_OPTIMIZED, cache.label, cache.key)


def _tensorrt_cache_dir(spec: RuntimeSpec, directory: Path) -> Path:
    """TensorRT engines are written by ORT in place while it builds them, and ORT checks them against
    TensorRT's version itself: a keyed directory (model, ORT, GPU), not a manifest entry."""
    import onnxruntime as ort

    key = {"model": _file_digest(spec.model_path), "ort": ort.__version__, "gpu": devices.gpu_identity()}
    return directory / "tensorrt" / f"{spec.model_path.stem}-{key_digest(key)}"


def _file_digest(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model: {exc.strerror}") from None


cpu_fingerprint = devices.cpu_fingerprint


def _describe(spec: RuntimeSpec, session: Any, used: tuple[str, ...]) -> ModelInfo:
    inputs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
    outputs = tuple(_tensor_spec(arg) for arg in session.get_outputs())
    on_gpu = bool(GPU_PROVIDERS & set(used))
    device = f"cuda:{cuda_index(spec.device)}" if on_gpu else "cpu"
    batched = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    return ModelInfo(
        name=spec.model_name,
        version=spec.model_version,
        platform="onnxruntime_onnx",
        inputs=inputs,
        outputs=outputs,
        device=device,
        providers=used,
        batched=batched,
    )


def _tensor_spec(arg: Any) -> TensorSpec:
    datatype = ONNX_TYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which the protocol cannot carry")
    # Symbolic ("batch") and unknown (None) dims are dynamic.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _to_str_array(array: np.ndarray) -> np.ndarray:
    import numpy as np

    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    return np.array(flat, dtype=object).reshape(array.shape)


def _options(spec: RuntimeSpec) -> OnnxOptions:
    return spec.options_as(OnnxOptions)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ONNX Runtime")
    group.add_argument(
        "--providers",
        metavar="LIST",
        help="comma-separated, best first: tensorrt,cuda,cpu (default: from --device; auto tries all)",
    )
    group.add_argument("--graph-optimization", choices=("disable", "basic", "extended", "all"), default="all")
    group.add_argument(
        "--no-optimized-cache",
        action="store_true",
        help="do not cache the optimised model (keyed by ORT version, providers and CPU)",
    )
    group.add_argument(
        "--cudnn-conv-algo-search", choices=("EXHAUSTIVE", "HEURISTIC", "DEFAULT"), default="EXHAUSTIVE"
    )


def options_from_args(args: argparse.Namespace, cache_dir: Path) -> OnnxOptions:
    return OnnxOptions(
        providers=_provider_names(args.providers),
        graph_optimization=args.graph_optimization,
        optimized_cache_dir=None if args.no_optimized_cache else cache_dir,
        cudnn_conv_algo_search=args.cudnn_conv_algo_search,
    )


def _provider_names(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    names = tuple(p.strip().lower() for p in value.split(",") if p.strip())
    unknown = [p for p in names if p not in PROVIDER_NAMES]
    if unknown or not names:
        raise ValueError(
            f"--providers: unknown provider {', '.join(unknown) or value!r}; use {','.join(PROVIDER_NAMES)}"
        )
    return names


def demo_model(cache_dir: Path, options: object) -> Path:
    from warmgate.modelserver import demo

    return demo.ensure_onnx(cache_dir)


RUNTIME = RuntimeType(
    name="onnx",
    title="ONNX Runtime",
    suffixes=(".onnx", ".ort"),
    needs="onnxruntime (pip install 'warmgate[server]')",
    prepare=prepare,
    load=load,
    add_arguments=add_arguments,
    options_from_args=options_from_args,
    demo_model=demo_model,
)
