"""Reference server throughput beside MLServer, serving the same ONNX file (not a timed test).

Both servers run at once on loopback and serve the demo ONNX model (the very same file):
  - `warmgate serve --demo` (ONNX Runtime, 1 worker, `--threads` = MLServer's session threads);
  - MLServer 1.7.1 from `.tools/mlserver-venv` with bench/mlserver_runtime.py's OnnxRuntimeModel
    (set up exactly as gate_effect's `mlserver-onnx` target: `parallel_workers: 0`).
MLServer's session uses ONNX Runtime's default intra-op thread count; this script measures that
count in MLServer's venv (threads a default session adds, plus the caller's) and gives warmgate
serve the same. Both run one batch at a time (warmgate serve's CPU `--concurrency` is 1; MLServer
runs `session.run` on its event loop).

Before measuring, both answer one identical request per batch size and the outputs are compared
(max abs diff), then both are warmed. Then, for each batch size and concurrency, warmgate's own
closed-loop generator (entrypoint/engine/loadgen.py, as the gate's load test uses it) drives each
server for `--duration` seconds after a short unmeasured warm-up; servers alternate within each cell
and the order flips every round (A B, B A, ...), so load from other work falls on both.
Throughput (req/s, inferences/s = req/s x batch) pools the rounds; p50/p99 over all requests.

    python bench/server_throughput.py [--batch-sizes 1,8] [--concurrency 1,2,4] [--duration 4]
                                      [--rounds 2] [--threads N] [--json out.json] [--smoke]

Loopback only; every wait has a deadline; the default run takes about two minutes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    MLSERVER_VENV,
    add_output_flags,
    bench_parser,
    demo_request,
    demo_server_argv,
    fmt,
    free_port,
    oip_ready,
    prepare_demo,
    print_machine,
    spawn,
    stop,
    tail,
    wait_for,
    write_json,
)
from gate_effect import mlserver_available, mlserver_command

from warmgate.config import ServerConfig
from warmgate.entrypoint.engine.loadgen import Target, closed_loop
from warmgate.protocols import make_adapter
from warmgate.protocols import send as base_send

SERVERS = ("warmgate", "mlserver")
LABELS = {"warmgate": "warmgate serve", "mlserver": "MLServer 1.7.1"}

# Intra-op threads of a session built with default options: ORT starts (threads - 1) pool threads.
ORT_DEFAULT_THREADS = """
import os, sys, onnxruntime as ort
count = lambda: len(os.listdir("/proc/self/task"))
before = count()
session = ort.InferenceSession(sys.argv[1], ort.SessionOptions(), providers=["CPUExecutionProvider"])
print(count() - before + 1)
"""


@dataclass
class Settings:
    batch_sizes: list[int]
    concurrencies: list[int]
    duration_s: float
    warmup_s: float
    rounds: int
    initial_warm_s: float
    ready_timeout_s: float


def mlserver_onnx_threads(model_path: Path) -> int:
    """The intra-op thread count ONNX Runtime picks by default in MLServer's venv, on this machine."""
    out = subprocess.run(
        [str(MLSERVER_VENV / "bin" / "python"), "-c", ORT_DEFAULT_THREADS, str(model_path)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def post(url: str, body: bytes, timeout_s: float = 60.0) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # loopback only
        return bytes(response.read())


def agreement(urls: dict[str, str], batch_sizes: list[int]) -> dict[str, Any]:
    """One identical request per batch size to both servers; max abs diff of every output."""
    adapter = make_adapter(ServerConfig(url=urls["warmgate"], model="demo"))
    result: dict[str, Any] = {}
    for bs in batch_sizes:
        body = demo_request(urls["warmgate"], bs).body
        assert body is not None
        outputs = {
            name: adapter.parse(post(f"{url}/v2/models/demo/infer", body)) for name, url in urls.items()
        }
        ours, theirs = outputs["warmgate"], outputs["mlserver"]
        cell: dict[str, Any] = {"outputs": sorted(ours), "same_names": sorted(ours) == sorted(theirs)}
        diffs = []
        for name in sorted(set(ours) & set(theirs)):
            a = np.asarray(ours[name].data, dtype=np.float64)
            b = np.asarray(theirs[name].data, dtype=np.float64)
            if ours[name].shape != theirs[name].shape or a.shape != b.shape:
                cell["shape_mismatch"] = {name: [ours[name].shape, theirs[name].shape]}
                continue
            diffs.append(float(np.max(np.abs(a - b))) if a.size else 0.0)
            cell["shape"] = list(ours[name].shape or ())
            cell["max_abs_output"] = float(np.max(np.abs(a))) if a.size else 0.0
        cell["max_abs_diff"] = max(diffs) if diffs else None
        result[f"bs{bs}"] = cell
    return result


async def drive(url: str, bs: int, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """Warm-up, then one measured closed loop; the same calls as the gate's load test."""
    target = Target(demo_request(url, bs), 0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession() as session:
        send = functools.partial(base_send, session, timeout=timeout)
        if warmup_s > 0:
            await closed_loop(send, [target], [0], concurrency=concurrency, duration_s=warmup_s)
        load = os.getloadavg()[0]
        samples = await closed_loop(send, [target], [0], concurrency=concurrency, duration_s=duration_s)
    ok = [lat for lat, kind in zip(samples.latencies, samples.kinds, strict=True) if not kind]
    errors: dict[str, int] = {}
    for kind in samples.kinds:
        if kind:
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "elapsed_s": samples.elapsed_s,
        "ok": len(ok),
        "errors": errors,
        "latencies_ms": [lat * 1000 for lat in ok],
        "rps": len(ok) / samples.elapsed_s if samples.elapsed_s > 0 else None,
        "load_average_1m": round(load, 2),
    }


def start_servers(
    work: Path, cache: Path, threads: int, settings: Settings
) -> tuple[dict[str, Any], dict[str, str], dict[str, Path]]:
    procs: dict[str, Any] = {}
    urls: dict[str, str] = {}
    logs: dict[str, Path] = {}
    for name in SERVERS:
        port = free_port()
        urls[name] = f"http://{HOST}:{port}"
        logs[name] = work / f"{name}.log"
        if name == "warmgate":
            argv = [*demo_server_argv("onnx", port, cache, threads=threads), "--workers", "1"]
        else:
            argv = mlserver_command("mlserver-onnx", port, work, cache)
        procs[name] = spawn(argv, logs[name])
    for name in SERVERS:
        try:
            # Server and model: MLServer says /v2/health/ready before its model is registered.
            wait_for(
                functools.partial(oip_ready, urls[name]), settings.ready_timeout_s, name, alive=procs[name]
            )
        except (RuntimeError, TimeoutError) as exc:
            for proc in procs.values():
                stop(proc)
            raise SystemExit(f"{exc}; log tail: {tail(logs[name], 8)}") from None
    return procs, urls, logs


def warmgate_threads_logged(log: Path) -> dict[str, int] | None:
    """What warmgate serve's worker reports it runs with (threads, concurrency)."""
    match = re.search(r"threads (\d+), concurrency (\d+)", log.read_text(errors="replace"))
    return {"threads": int(match.group(1)), "concurrency": int(match.group(2))} if match else None


def summarise(records: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    rows = []
    for bs in settings.batch_sizes:
        for concurrency in settings.concurrencies:
            row: dict[str, Any] = {"batch_size": bs, "concurrency": concurrency}
            for name in SERVERS:
                cells = [
                    r for r in records
                    if r["server"] == name and r["batch_size"] == bs and r["concurrency"] == concurrency
                ]  # fmt: skip
                latencies = [lat for c in cells for lat in c["latencies_ms"]]
                elapsed = sum(c["elapsed_s"] for c in cells)
                ok = sum(c["ok"] for c in cells)
                rps = ok / elapsed if elapsed > 0 else None
                p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (None, None)
                per_round = [c["rps"] for c in cells if c["rps"] is not None]
                row[name] = {
                    "requests": ok,
                    "errors": sum(sum(c["errors"].values()) for c in cells),
                    "rps": rps,
                    "inferences_per_s": rps * bs if rps is not None else None,
                    "rps_rounds": [min(per_round), max(per_round)] if per_round else None,
                    "p50_ms": float(p50) if p50 is not None else None,
                    "p99_ms": float(p99) if p99 is not None else None,
                }
            ours, theirs = row["warmgate"]["rps"], row["mlserver"]["rps"]
            row["ratio"] = ours / theirs if ours and theirs else None
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| batch | concurrency | warmgate serve req/s (inf/s) | MLServer req/s (inf/s) | "
        "warmgate / MLServer | p50 ms (warmgate / MLServer) | p99 ms (warmgate / MLServer) | "
        "requests (warmgate / MLServer) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        w, m = row["warmgate"], row["mlserver"]
        out.append(
            f"| {row['batch_size']} | {row['concurrency']} | "
            f"{fmt(w['rps'])} ({fmt(w['inferences_per_s'])}) | "
            f"{fmt(m['rps'])} ({fmt(m['inferences_per_s'])}) | "
            f"{fmt(row['ratio'], 2, 'x')} | {fmt(w['p50_ms'])} / {fmt(m['p50_ms'])} | "
            f"{fmt(w['p99_ms'])} / {fmt(m['p99_ms'])} | {w['requests']} / {m['requests']} | "
            f"{w['errors'] + m['errors']} |"
        )
    return "\n".join(out)


def warm(urls: dict[str, str], settings: Settings) -> None:
    """Every server, every batch size, at the highest concurrency, before any measurement."""
    for url in urls.values():
        for bs in settings.batch_sizes:
            asyncio.run(drive(url, bs, max(settings.concurrencies), settings.initial_warm_s, 0))


def measure(urls: dict[str, str], settings: Settings) -> list[dict[str, Any]]:
    """Each cell on both servers back to back; the order flips per cell and per round."""
    records = []
    cells = [(bs, c) for bs in settings.batch_sizes for c in settings.concurrencies]
    for round_ in range(settings.rounds):
        for index, (bs, concurrency) in enumerate(cells):
            order = SERVERS if (index + round_) % 2 == 0 else SERVERS[::-1]
            for name in order:
                result = asyncio.run(
                    drive(urls[name], bs, concurrency, settings.duration_s, settings.warmup_s)
                )
                result.update(server=name, batch_size=bs, concurrency=concurrency, round=round_)
                records.append(result)
                print(
                    f"round {round_} bs{bs} c{concurrency} {name:8s}: {fmt(result['rps'])} req/s, "
                    f"{result['ok']} ok, errors {result['errors'] or 0}, load {result['load_average_1m']}",
                    flush=True,
                )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--concurrency", default="1,2,4", help="closed-loop workers, comma-separated")
    parser.add_argument(
        "--duration", type=float, default=4.0, help="measured seconds per server, cell, round"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="unmeasured seconds before each measurement"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the server order flips every round")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads for both (default: MLServer's ORT default)"
    )
    add_output_flags(parser, json_help="write every measurement and the summary here")
    args = parser.parse_args(argv)
    if not mlserver_available():
        parser.error(f"needs {MLSERVER_VENV}/bin/mlserver (see docs/benchmarks.md)")
    settings = Settings(
        batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b],
        concurrencies=[int(c) for c in args.concurrency.split(",") if c],
        duration_s=args.duration, warmup_s=args.warmup, rounds=args.rounds,
        initial_warm_s=1.0, ready_timeout_s=180.0,
    )  # fmt: skip
    if args.smoke:
        settings.concurrencies = settings.concurrencies[:2]
        settings.duration_s, settings.warmup_s, settings.rounds = 0.3, 0.1, 1
        settings.initial_warm_s = 0.2

    info = print_machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="warmgate-server-throughput-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        model_path = prepare_demo("onnx", cache)
        threads = args.threads or mlserver_onnx_threads(model_path)
        model = {
            "path": str(model_path.relative_to(work)),
            "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        }
        print(f"model {model['path']} sha256 {model['sha256'][:12]}; intra-op threads {threads}", flush=True)
        procs, urls, logs = start_servers(work, cache, threads, settings)
        try:
            logged = warmgate_threads_logged(logs["warmgate"])
            check = agreement(urls, settings.batch_sizes)
            for bs, cell in check.items():
                print(f"outputs {bs}: max abs diff {cell['max_abs_diff']}", flush=True)
            warm(urls, settings)
            records = measure(urls, settings)
            died = {name: proc.returncode for name, proc in procs.items() if proc.poll() is not None}
        finally:
            for proc in procs.values():
                stop(proc)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.monotonic() - started, 1)
    rows = summarise(records, settings)
    print()
    print(markdown(rows))
    loads = [r["load_average_1m"] for r in records]
    print(
        f"\nintra-op threads {threads} (warmgate serve logged {logged}); load average (1 min) during "
        f"measurements {min(loads):.2f}-{max(loads):.2f}; wall {info['wall_s']} s",
        flush=True,
    )
    write_json(
        args.json,
        {
            "machine": info,
            "settings": settings.__dict__,
            "model": model,
            "threads": threads,
            "warmgate_logged": logged,
            "agreement": check,
            "records": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in records],
            "summary": rows,
        },
    )
    failed = died or any(sum(r["errors"].values()) for r in records)
    failed = failed or any(c["max_abs_diff"] is None or not c["same_names"] for c in check.values())
    if died:
        print(f"servers exited during the run: {died}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
