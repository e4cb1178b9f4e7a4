"""PyTorch: TorchScript (`torch.jit.load`) and `torch.export` programs (.pt2), CPU or CUDA.

Only this module and torch_demo.py import torch, and only inside functions: `RUNTIME` at the bottom
declares the runtime to the registry, which the CLI reads in PID 1 of `warmgate run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from warmgate.modelserver.runtime import devices
from warmgate.modelserver.runtime.base import (
    InferenceError,
    ModelInfo,
    ModelLoadError,
    Runtime,
    RuntimeSpec,
    RuntimeType,
    TensorSpec,
    first_line,
)
from warmgate.modelserver.runtime.torch_archive import SIGNATURE_FILE, torchscript_allowed
from warmgate.modelserver.trace import startup_step

if TYPE_CHECKING:
    import numpy as np
    import torch

    from warmgate.modelserver.runtime.inductor_cache import CompileCache

log = logging.getLogger(__name__)

GPU_CONCURRENCY = 2
TorchDtype = Literal["float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class TorchOptions:
    dtype: TorchDtype = "float32"
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    # Where torch.compile's artifacts are kept across starts (see inductor_cache.py); None: not kept.
    compile_cache_dir: Path | None = None


class TorchRuntime(Runtime):
    def __init__(
        self,
        spec: RuntimeSpec,
        module: Any,
        info: ModelInfo,
        device: torch.device,
        compile_cache: CompileCache | None = None,
    ) -> None:
        self._spec = spec
        self._compile_cache = compile_cache
        self._module = module
        self._info = info
        self._device = device
        self._options = spec.options_as(TorchOptions)
        self._dtype = _torch_dtype(self._options.dtype)
        self._concurrency = spec.concurrency or (GPU_CONCURRENCY if device.type == "cuda" else 1)
        # torch.compile traces on the first call of each new input shape; two threads compiling at
        # once corrupt dynamo's caches, so calls with unseen shapes are serialised.
        self._compile_lock = threading.Lock()
        self._compiled_shapes: set[tuple[tuple[int, ...], ...]] = set()

    def info(self) -> ModelInfo:
        return self._info

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        try:
            with torch.inference_mode():
                args = [self._to_tensor(inputs[t.name]) for t in self._info.inputs]
                raw = self._call_compiled(args) if self._options.compile else self._module(*args)
                return self._outputs(raw)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise InferenceError(first_line(exc)) from exc

    def warmed(self) -> None:
        if self._compile_cache is not None:
            self._compile_cache.publish()

    def _call_compiled(self, args: list[torch.Tensor]) -> Any:
        import torch

        key = tuple(tuple(a.shape) for a in args)
        if key in self._compiled_shapes:
            return self._module(*args)
        with self._compile_lock:
            if self._info.batched:
                # Without this every new batch size triggers a recompile.
                for arg in args:
                    torch._dynamo.mark_dynamic(arg, 0)
            result = self._module(*args)
            self._compiled_shapes.add(key)
            if self._compile_cache is not None:
                self._compile_cache.compiled()
            return result

    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        import numpy as np
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tensor.is_floating_point() and self._dtype != torch.float32:
            tensor = tensor.to(self._dtype)
        return tensor.to(self._device, non_blocking=True)

    def _outputs(self, raw: Any) -> dict[str, np.ndarray]:
        import torch

        from warmgate.tensors import FLOAT_TYPES, NUMPY_DTYPES

        specs = self._info.outputs
        if isinstance(raw, torch.Tensor):
            values: Sequence[Any] = (raw,)
        elif isinstance(raw, dict):
            values = [raw[t.name] for t in specs]
        else:
            values = list(raw)
        if len(values) != len(specs):
            raise InferenceError(f"model returned {len(values)} outputs, its signature lists {len(specs)}")
        result: dict[str, np.ndarray] = {}
        for spec, value in zip(specs, values, strict=True):
            tensor = value.detach()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
                tensor = tensor.float()
            array = tensor.cpu().numpy()
            # Reduced-precision runs still answer in the datatype the signature promises.
            if spec.datatype in FLOAT_TYPES and array.dtype != NUMPY_DTYPES[spec.datatype]:
                array = array.astype(NUMPY_DTYPES[spec.datatype])
            result[spec.name] = array
        return result

    def close(self) -> None:
        import torch

        self._module = None
        if self._compile_cache is not None:
            self._compile_cache.publish()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def resolve_device(requested: str) -> torch.device:
    """In a worker: auto means CUDA when torch can use it."""
    import torch

    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested} requested, but torch sees no CUDA GPU")
    return device


def prepare(spec: RuntimeSpec) -> Runtime | None:
    """Before fork: load CPU models once so workers share the weights copy-on-write.

    Only for a device known to be the CPU without asking CUDA (NVML and the build's CUDA version);
    CUDA workers load after fork. Nothing is run here: the first run starts OpenMP threads, which
    a forked child would inherit as dead.
    """
    import torch

    on_cpu = spec.device == "cpu" or (
        spec.device == "auto" and (torch.version.cuda is None or devices.gpu_count() == 0)
    )
    if not on_cpu or spec.require_gpu:
        return None
    return _load(spec, torch.device("cpu"))


def load(spec: RuntimeSpec) -> TorchRuntime:
    import torch

    if spec.device == "auto" and torch.version.cuda is None:
        device = torch.device("cpu")  # a CPU build: no need to ask CUDA
    else:
        device = resolve_device(spec.device)
    if spec.require_gpu and device.type != "cuda":
        raise ModelLoadError(f"{spec.model_path}: --require-gpu, but torch sees no CUDA GPU")
    return _load(spec, device)


def _load(spec: RuntimeSpec, device: torch.device) -> TorchRuntime:
    import torch

    if device.type == "cpu":
        torch.set_num_threads(spec.threads)
    path = spec.model_path
    extra = {SIGNATURE_FILE: ""}
    try:
        if path.suffix == ".pt2":
            with startup_step("weights read", path.name):
                program = torch.export.load(str(path), extra_files=extra)
            if device.type == "cuda":
                from torch.export.passes import move_to_device_pass

                with startup_step("device init", f"{device} (CUDA context, weights copied)"):
                    program = move_to_device_pass(program, device)
            inputs, outputs = _signature(spec, extra[SIGNATURE_FILE], program)
            module: Any = program.module()
            platform = "pytorch_export"
        else:
            with torchscript_allowed(), startup_step("weights read", f"{path.name} onto {device}"):
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            module.eval()
            inputs, outputs = _signature(spec, extra[SIGNATURE_FILE], None)
            platform = "pytorch_torchscript"
    except ModelLoadError:
        raise
    except Exception as exc:  # torch raises RuntimeError, ValueError, zipfile errors...
        raise ModelLoadError(f"{path}: torch cannot load the model: {first_line(exc)}") from None
    options = spec.options_as(TorchOptions)
    if options.dtype != "float32" and hasattr(module, "to"):
        module = module.to(_torch_dtype(options.dtype))
    compile_cache: CompileCache | None = None
    if options.compile:
        if platform == "pytorch_torchscript":
            raise ModelLoadError(
                f"{path}: torch.compile cannot compile TorchScript; export the model with torch.export (.pt2)"
            )
        if options.compile_cache_dir is not None:
            from warmgate.modelserver.runtime import inductor_cache

            compile_cache = inductor_cache.activate(
                options.compile_cache_dir,
                path,
                device=str(device),
                dtype=options.dtype,
                mode=options.compile_mode,
                backend=options.compile_backend,
            )
        module = torch.compile(module, mode=options.compile_mode, backend=options.compile_backend)
    batched = all(t.shape and t.shape[0] == -1 for t in (*inputs, *outputs))
    info = ModelInfo(
        name=spec.model_name,
        version=spec.model_version,
        platform=platform,
        inputs=inputs,
        outputs=outputs,
        device=str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        providers=(f"torch-{torch.__version__}",),
        batched=batched,
    )
    return TorchRuntime(spec, module, info, device, compile_cache)


def _signature(
    spec: RuntimeSpec, embedded: str | bytes, program: Any
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Command-line signature first, then the one embedded in the archive, then torch.export's own."""
    if spec.inputs and spec.outputs:
        return spec.inputs, spec.outputs
    if embedded:
        try:
            data = json.loads(embedded)
            return (
                tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in data["inputs"]),
                tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in data["outputs"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"{spec.model_path}: bad {SIGNATURE_FILE} inside the archive: {exc}"
            ) from None
    if program is not None:
        return _export_signature(program)
    raise ModelLoadError(
        f"{spec.model_path}: TorchScript carries no input/output names; pass --input NAME:DATATYPE:DIMS "
        f"and --output NAME:DATATYPE:DIMS, or save it with a {SIGNATURE_FILE} extra file"
    )


def _export_signature(program: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    from torch.export.graph_signature import InputKind, OutputKind

    nodes = {node.name: node for node in program.graph.nodes}

    def spec_of(name: str, public: str) -> TensorSpec:
        value = nodes[name].meta["val"]
        dims = tuple(d if isinstance(d, int) else -1 for d in value.shape)
        return TensorSpec(public, _datatype(value.dtype), dims)

    signature = program.graph_signature
    inputs = tuple(
        spec_of(s.arg.name, s.arg.name) for s in signature.input_specs if s.kind == InputKind.USER_INPUT
    )
    user_outputs = [s for s in signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    outputs = tuple(spec_of(s.arg.name, f"output__{i}") for i, s in enumerate(user_outputs))
    return inputs, outputs


def _datatype(dtype: torch.dtype) -> str:
    import torch

    table = {
        torch.float16: "FP16",
        torch.float32: "FP32",
        torch.float64: "FP64",
        torch.int64: "INT64",
        torch.int32: "INT32",
        torch.int16: "INT16",
        torch.int8: "INT8",
        torch.uint8: "UINT8",
        torch.bool: "BOOL",
        torch.bfloat16: "FP32",
    }
    if dtype not in table:
        raise ModelLoadError(f"torch dtype {dtype} has no Open Inference Protocol datatype")
    return table[dtype]


def _torch_dtype(name: TorchDtype) -> torch.dtype:
    import torch

    dtype: torch.dtype = getattr(torch, name)
    return dtype


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PyTorch")
    group.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    group.add_argument(
        "--compile", action="store_true", help="torch.compile the model (batch dim marked dynamic)"
    )
    group.add_argument("--compile-mode", help="torch.compile mode, e.g. reduce-overhead or max-autotune")
    group.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (default inductor)"
    )
    group.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not keep torch.compile's Inductor/Triton caches in the cache dir (keyed by model, "
        "torch, device and options)",
    )


def options_from_args(args: argparse.Namespace, cache_dir: Path) -> TorchOptions:
    return TorchOptions(
        dtype=args.dtype,
        compile=args.compile,
        compile_mode=args.compile_mode,
        compile_backend=args.compile_backend,
        compile_cache_dir=None if args.no_compile_cache else cache_dir,
    )


def demo_model(cache_dir: Path, options: object) -> Path:
    from warmgate.modelserver import demo

    # torch.compile needs a torch.export program, not TorchScript.
    if isinstance(options, TorchOptions) and options.compile:
        return demo.ensure_export(cache_dir)
    return demo.ensure_torchscript(cache_dir)


RUNTIME = RuntimeType(
    name="torch",
    title="PyTorch",
    suffixes=(".pt", ".pth", ".ts", ".pt2"),
    needs="torch (pip install 'warmgate[torch]')",
    prepare=prepare,
    load=load,
    add_arguments=add_arguments,
    options_from_args=options_from_args,
    demo_model=demo_model,
)
