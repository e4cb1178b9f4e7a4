"""`warmgate serve`: turn the command line into typed options once, then run the server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from pathlib import Path
from typing import TextIO

from warmgate.config import ConfigError
from warmgate.modelserver import demo, supervisor, worker
from warmgate.modelserver.cache import default_cache_dir, usable_cache_dir
from warmgate.modelserver.options import DEMO_RUNTIME, GRPC_PORT_ENV, ServeOptions
from warmgate.modelserver.runtime import devices
from warmgate.modelserver.runtime.base import (
    ModelInfo,
    ModelLoadError,
    RuntimeSpec,
    RuntimeType,
    TensorSpec,
    TextOptions,
    validate_device,
)
from warmgate.modelserver.runtime.registry import runtime_for_suffix, runtime_type
from warmgate.modelserver.sockets import GrpcListen, ListenError, bind_socket, bound_port, format_url

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def run(options: ServeOptions, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout

    def announce(port: int, grpc_port: int | None, device: str, providers: tuple[str, ...]) -> None:
        spec = options.spec
        # The line tests and operators wait for; with --port 0 (--grpc-port 0) it is the only place
        # the port appears.
        grpc = "" if grpc_port is None else f" {format_url(options.host, grpc_port, 'grpc')}"
        print(
            f"warmgate modelserver ready: {format_url(options.host, port)}{grpc} model={spec.model_name} "
            f"runtime={spec.kind} device={device} providers={','.join(providers)} workers={options.workers}",
            file=stream,
            flush=True,
        )

    try:
        if options.workers > 1:
            return supervisor.supervise(options, announce)
        sock = bind_socket(options.host, options.port, reuse_port=False, listen=True)
        port = bound_port(sock)

        def announce_single(info: ModelInfo, grpc_port: int | None) -> None:
            announce(port, grpc_port, info.device, info.providers)

        grpc_listen = None
        if options.grpc_port is not None:
            grpc_listen = GrpcListen(options.host, options.grpc_port, shared=False)
        return asyncio.run(worker.serve(options, sock, announce_single, grpc_listen=grpc_listen))
    except ListenError as exc:
        log.error("%s", exc)
        return worker.EXIT_FAILED
    except ModelLoadError as exc:
        log.error("%s", exc)
        return worker.EXIT_MODEL_ERROR


def options_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeOptions:
    """Validate the command line; generate the demo or example model when asked. Raises ConfigError."""
    env = dict(os.environ) if environ is None else environ
    _positive("--workers", args.workers)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be 0..65535, got {args.port}")
    grpc_port = _grpc_port(args.grpc_port, env)
    if grpc_port is not None and grpc_port == args.port and grpc_port != 0:
        raise ConfigError(f"--grpc-port: must differ from --port, both are {grpc_port}")
    for flag in ("threads", "concurrency"):
        if getattr(args, flag) is not None:
            _positive(f"--{flag}", getattr(args, flag))
    _positive("--max-batch-size", args.max_batch_size)
    _positive("--warmup-count", args.warmup_count)
    _positive("--max-length", args.max_length)
    if args.graceful_timeout < 0:
        raise ConfigError(f"--graceful-timeout: must be >= 0, got {args.graceful_timeout:g}")
    if args.max_request_mb <= 0:
        raise ConfigError(f"--max-request-mb: must be > 0, got {args.max_request_mb:g}")
    try:
        device = validate_device(args.device)
    except ValueError as exc:
        raise ConfigError(f"--device: {exc}") from None
    cache_dir = usable_cache_dir(Path(args.cache_dir) if args.cache_dir else default_cache_dir(env))
    runtime, path, name, text = _model_source(args, cache_dir)
    if args.tokenizer:
        tokenizer = Path(args.tokenizer)
        if not tokenizer.is_file():
            raise ConfigError(f"--tokenizer {tokenizer}: no such file")
        text = TextOptions(tokenizer, args.text_input, args.max_length)
    model_name = args.model_name or name
    if not _MODEL_NAME.match(model_name):
        raise ConfigError(f"--model-name: must match {_MODEL_NAME.pattern}, got {model_name!r}")
    threads = args.threads or max(1, devices.available_cpus() // args.workers)
    spec = RuntimeSpec(
        kind=runtime.name,
        model_path=path,
        model_name=model_name,
        model_version=args.model_version,
        device=device,
        threads=threads,
        concurrency=args.concurrency,
        require_gpu=args.require_gpu,
        inputs=tuple(_tensor_arg("--input", v) for v in args.input),
        outputs=tuple(_tensor_arg("--output", v) for v in args.output),
        options=_runtime_options(runtime, args, cache_dir),
        text=text,
    )
    return ServeOptions(
        spec=spec,
        host=args.host,
        port=args.port,
        grpc_port=grpc_port,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        graceful_timeout_s=args.graceful_timeout,
        warmup_batch_sizes=_batch_sizes(args.warmup_batch_sizes),
        warmup_count=args.warmup_count,
    )


def _model_source(
    args: argparse.Namespace, cache_dir: Path
) -> tuple[RuntimeType, Path, str, TextOptions | None]:
    if args.demo:
        runtime = runtime_type(args.runtime or DEMO_RUNTIME)
        if runtime.demo_model is None:
            raise ConfigError(f"--demo: runtime {runtime.name} has no demo model")
        try:
            path = runtime.demo_model(cache_dir, _runtime_options(runtime, args, cache_dir))
        except ImportError as exc:
            raise ConfigError(
                f"--demo --runtime {runtime.name} needs {exc.name}: install {runtime.needs}"
            ) from None
        return runtime, path, demo.MODEL_NAME, None
    if args.example:
        from warmgate.modelserver.examples import minilm

        if args.runtime not in (None, "onnx"):
            raise ConfigError("--example minilm: the example is built as ONNX; use --runtime onnx")
        try:
            path, tokenizer = minilm.ensure(cache_dir)
        except ImportError as exc:
            raise ConfigError(f"--example minilm needs {exc.name} (pip install 'warmgate[text]')") from None
        text = TextOptions(tokenizer, args.text_input, args.max_length)
        return runtime_type("onnx"), path, minilm.MODEL_NAME, text
    path = Path(args.model)
    if not path.is_file():
        raise ConfigError(f"--model {path}: no such file")
    name = args.runtime or runtime_for_suffix(path.suffix)
    if name is None:
        raise ConfigError(
            f"--model {path}: cannot tell the runtime from the suffix {path.suffix!r}; pass --runtime"
        )
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).lstrip("-._") or "model"
    return runtime_type(name), path, stem, None


def _runtime_options(runtime: RuntimeType, args: argparse.Namespace, cache_dir: Path) -> object:
    try:
        return runtime.options_from_args(args, cache_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _grpc_port(flag_value: str | None, env: dict[str, str]) -> int | None:
    """--grpc-port, else $WARMGATE_GRPC_PORT, else none; "off" turns an inherited variable off."""
    source, value = "--grpc-port", flag_value
    if value is None:
        source, value = GRPC_PORT_ENV, env.get(GRPC_PORT_ENV, "").strip() or None
    if value is None or value.strip().lower() == "off":
        return None
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{source}: must be 0..65535 or off, got {value!r}")
    return port


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{flag}: must be >= 1, got {value}")


def _batch_sizes(value: str) -> tuple[int, ...]:
    if not value.strip():
        return ()
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--warmup-batch-sizes: expected comma-separated integers, got {value!r}") from None
    if any(s < 1 for s in sizes):
        raise ConfigError(f"--warmup-batch-sizes: sizes must be >= 1, got {value!r}")
    return sizes


def _tensor_arg(flag: str, value: str) -> TensorSpec:
    from warmgate.tensors import NUMPY_DTYPES

    parts = value.split(":")
    if len(parts) != 3 or not parts[0]:
        raise ConfigError(f"{flag} {value!r}: expected NAME:DATATYPE:DIMS, e.g. input:FP32:-1,3,64,64")
    name, datatype, dims_text = parts
    if datatype not in NUMPY_DTYPES:
        raise ConfigError(
            f"{flag} {value!r}: unknown datatype {datatype!r}; use one of {', '.join(NUMPY_DTYPES)}"
        )
    try:
        dims = tuple(int(d) for d in dims_text.split(","))
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r}: dims must be comma-separated integers (-1 for dynamic)"
        ) from None
    if any(d < -1 or d == 0 for d in dims):
        raise ConfigError(f"{flag} {value!r}: dims must be positive or -1")
    return TensorSpec(name, datatype, dims)
