"""The same model over HTTP/JSON, HTTP binary tensors and gRPC, driven by warmgate's own load
generator (not a timed test).

One `warmgate serve` process serves REST and gRPC from the same worker and model. Two models, both
taking the demo's FP32 [batch, 3, 64, 64] input: `demo` (the reference demo CNN, where the model's
compute dominates) and `tiny` (a mean over each channel, where what the protocol costs to encode,
send and decode dominates, as for a small model behind a busy API). For each model, batch size and
protocol, warmgate's closed loop (the engine's generator, through each protocol's
adapter: the same request bodies the load test sends) runs for `--duration` seconds at
`--concurrency`; the three protocols take turns, round after round (JSON, binary, gRPC, JSON, ...),
so background load on this shared machine falls on all of them alike. Reported per protocol and
batch size: achievable rate (successful requests per second), p50/p99 latency, the generator's own
CPU per request (this process's CPU time / requests, which is what the load test takes from a pod
that shares its CPUs with the server), and the request body size; then each figure's ratio to
HTTP/JSON within the same round, median over the rounds.

    python bench/protocols_bench.py [--models demo,tiny] [--rounds 5] [--duration 5]
                                    [--concurrency 4] [--batch-sizes 1,8] [--json out.json] [--smoke]

Loopback only; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    add_output_flags,
    bench_parser,
    demo_shape,
    fmt,
    median_spread,
    prepare_demo,
    print_machine,
    spawn_until_line,
    stop,
    write_json,
)

from warmgate.config import ServerConfig
from warmgate.entrypoint.engine.loadgen import LoadSamples, Target, closed_loop
from warmgate.entrypoint.engine.payloads import build_inputs
from warmgate.protocols import make_adapter
from warmgate.protocols.base import Adapter

PROTOCOLS = ("json", "binary", "grpc")
LABELS = {"json": "HTTP/JSON", "binary": "HTTP binary", "grpc": "gRPC"}
# The server runs one intra-op thread: a one-CPU pod, and steadier beside the generator here.
THREADS = 1


def tiny_model(path: Path) -> Path:
    """input FP32 [batch, 3, 64, 64] -> output FP32 [batch, 3], the mean of each channel."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["output"], axes=[2, 3], keepdims=0)],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime accepts for opset 17
    onnx.save(model, str(path))
    return path


def start_server(model: str, cache: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """`warmgate serve` with REST and gRPC on free ports; returns (process, http, grpc URL)."""
    source = ["--demo"] if model == "demo" else ["--model", str(tiny_model(cache / "tiny.onnx"))]
    argv = [sys.executable, "-m", "warmgate", "serve", *source, "--model-name", "demo",
            "--host", HOST, "--port", "0", "--grpc-port", "0", "--threads", str(THREADS),
            "--cache-dir", str(cache)]  # fmt: skip
    try:
        # Ports 0: the server binds them and says which in its ready line.
        proc, ready = spawn_until_line(argv, log, r"ready: (http://\S+) (grpc://\S+)", 180, "warmgate serve")
    except RuntimeError as exc:
        raise SystemExit(f"warmgate serve did not print its ready line: {exc}") from None
    return proc, ready.group(1), ready.group(2)


def adapter_for(protocol: str, http_url: str, grpc_url: str) -> Adapter:
    if protocol == "grpc":
        return make_adapter(ServerConfig(url=grpc_url, protocol="oip-grpc", model="demo"))
    return make_adapter(
        ServerConfig(url=http_url, protocol="oip", model="demo", binary_tensors=protocol == "binary")
    )


async def drive(adapter: Adapter, batch_size: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    # The adapter's transport (a gRPC channel) lives on this event loop: close it here too.
    try:
        return await _drive(adapter, batch_size, concurrency, duration_s)
    finally:
        await adapter.aclose()


async def _drive(adapter: Adapter, batch_size: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    request = adapter.build(build_inputs(demo_shape(batch_size)), batch_size)
    target = Target(request, 0)
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency + 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        send = functools.partial(adapter.send, session, timeout=timeout)
        # A short unmeasured run first: connections, the channel and the server's caches are warm.
        await closed_loop(send, [target], [0], concurrency=concurrency, duration_s=0.5)
        samples = LoadSamples()
        cpu_before = time.process_time()
        await closed_loop(
            send, [target], [0], concurrency=concurrency, duration_s=duration_s, samples=samples
        )
        cpu_s = time.process_time() - cpu_before
    ok = np.asarray([lat for lat, kind in zip(samples.latencies, samples.kinds, strict=True) if not kind])
    failures = len(samples) - int(ok.size)
    p50, p99 = np.percentile(ok * 1000, [50, 99]) if ok.size else (float("nan"), float("nan"))
    return {
        "requests": len(samples),
        "errors": failures,
        "error_kinds": sorted(set(samples.kinds) - {""}),
        "rps": ok.size / samples.elapsed_s if samples.elapsed_s else 0.0,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "generator_cpu_ms_per_request": 1000 * cpu_s / max(1, len(samples)),
        "body_bytes": request.size,
    }


def summarise(
    records: list[dict[str, Any]], models: list[str], batch_sizes: list[int]
) -> list[dict[str, Any]]:
    rows = []
    by_cell = {(r["model"], r["batch_size"], r["protocol"], r["round"]): r for r in records}
    for model, batch_size, protocol in itertools.product(models, batch_sizes, PROTOCOLS):
        same_cell = (model, batch_size)
        mine = [
            r for r in records if (r["model"], r["batch_size"]) == same_cell and r["protocol"] == protocol
        ]
        row: dict[str, Any] = {"model": model, "batch_size": batch_size, "protocol": protocol}
        for key in ("rps", "p50_ms", "p99_ms", "generator_cpu_ms_per_request"):
            row[key] = median_spread([r[key] for r in mine])
            # Ratio to HTTP/JSON within the same round: like with like, then the median.
            ratios = []
            for r in mine:
                json_run = by_cell[(model, batch_size, "json", r["round"])]
                if json_run[key]:
                    ratios.append(r[key] / json_run[key])
            row[f"{key}_vs_json"] = median_spread(ratios)
        row["body_bytes"] = mine[0]["body_bytes"] if mine else None
        row["errors"] = sum(r["errors"] for r in mine)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| model | batch | protocol | body bytes | rate, req/s | p50 ms | p99 ms | generator CPU ms/req | "
        "rate vs JSON | p50 vs JSON | p99 vs JSON | generator CPU vs JSON | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        out.append(
            f"| {row['model']} | {row['batch_size']} | {LABELS[row['protocol']]} | {row['body_bytes']} | "
            f"{fmt(row['rps']['median'], 0)} | {fmt(row['p50_ms']['median'], 2)} | "
            f"{fmt(row['p99_ms']['median'], 2)} | {fmt(row['generator_cpu_ms_per_request']['median'], 3)} | "
            f"{fmt(row['rps_vs_json']['median'], 2, 'x')} | {fmt(row['p50_ms_vs_json']['median'], 2, 'x')} | "
            f"{fmt(row['p99_ms_vs_json']['median'], 2, 'x')} | "
            f"{fmt(row['generator_cpu_ms_per_request_vs_json']['median'], 2, 'x')} | {row['errors']} |"
        )
    return "\n".join(out)


def measure_model(
    model: str, cache: Path, args: argparse.Namespace, batch_sizes: list[int]
) -> list[dict[str, Any]]:
    """Every round, batch size and protocol against one server process serving `model`."""
    records = []
    proc, http_url, grpc_url = start_server(model, cache, cache.parent / f"{model}-server.log")
    try:
        for round_index in range(args.rounds):
            for batch_size, protocol in itertools.product(batch_sizes, PROTOCOLS):
                adapter = adapter_for(protocol, http_url, grpc_url)
                record = asyncio.run(drive(adapter, batch_size, args.concurrency, args.duration))
                record.update(model=model, round=round_index, batch_size=batch_size, protocol=protocol)
                records.append(record)
                print(
                    f"{model} round {round_index} bs{batch_size} {LABELS[protocol]}: "
                    f"{record['rps']:.0f} req/s, "
                    f"p50 {record['p50_ms']:.2f} ms, p99 {record['p99_ms']:.2f} ms, "
                    f"generator {record['generator_cpu_ms_per_request']:.3f} ms CPU/req, "
                    f"{record['errors']} errors {record['error_kinds'] or ''}",
                    flush=True,
                )
    finally:
        stop(proc)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--models", default="demo,tiny", help="demo, tiny or both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per protocol per round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,8")
    add_output_flags(parser, json_help="write every record and the summary here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.duration = 1, 0.5
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    models = [m for m in args.models.split(",") if m]
    if set(models) - {"demo", "tiny"}:
        parser.error(f"unknown models: {args.models}")
    info = print_machine()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warmgate-protocols-") as tmp:
        cache = Path(tmp) / "cache"
        prepare_demo("onnx", cache)
        for model in models:
            records += measure_model(model, cache, args, batch_sizes)
    rows = summarise(records, models, batch_sizes)
    print()
    print(markdown(rows))
    write_json(
        args.json,
        {
            "machine": info,
            "settings": {"rounds": args.rounds, "duration_s": args.duration, "concurrency": args.concurrency},
            "records": records,
            "summary": rows,
        },
    )
    return 1 if any(r["errors"] for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
