"""The engine's load generator side by side with wrk, against the same endpoint in the same run
(not a timed test).

For each target the endpoint runs in its own process; in each round wrk, then warmgate's closed
loop over the engine's lean HTTP/1.1 client, then the same loop over the aiohttp session it used
before, drive it with the same connections/concurrency for the same duration, back to back, and
the table compares throughput and latency percentiles (medians over the rounds; ratios are paired
within a round, so a machine that is busier in one round than another moves both sides). When
both are limited by the server (the intended case: the generator must leave the CPU to the model
server), throughput agrees; where the generator is the bottleneck, the ratio shows by how much.

    python bench/loadgen_bench.py [--duration 5] [--concurrency 4] [--rounds 5] [--modelserver]

Targets: `trivial` (an aiohttp endpoint answering a small JSON document) and, with
--modelserver, `warmgate serve --demo` (Open Inference Protocol, batch 1, 48 KiB request body).
Loopback only; bounded to roughly 3 x duration x rounds per target plus start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import spawn_until_line, stop  # noqa: E402

from warmgate.config import Config, ServerConfig, Shape  # noqa: E402
from warmgate.entrypoint.engine.connections import client_session  # noqa: E402
from warmgate.entrypoint.engine.loadgen import Target, closed_loop  # noqa: E402
from warmgate.entrypoint.engine.payloads import build_inputs  # noqa: E402
from warmgate.protocols import PreparedRequest, make_adapter, send  # noqa: E402

TRIVIAL_SERVER = """
import sys
from aiohttp import web
body = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]}'
async def handle(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_post("/infer", handle)
# run_app calls `print` once its site listens: the handshake the benchmark waits for.
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda _: print("ready", flush=True),
            access_log=None)
"""

WRK_SCRIPT = """
local f = io.open(os.getenv("WARMGATE_BENCH_BODY"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


# The engine's generator over its lean HTTP/1.1 client, and over the aiohttp session it used before.
TOOLS = {"warmgate": "lean", "warmgate-aiohttp": "aiohttp"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_trivial(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [sys.executable, "-c", TRIVIAL_SERVER, str(port)]
    proc, _ = spawn_until_line(argv, workdir / "trivial.log", r"^ready$", 20, "the trivial server")
    return proc, f"http://127.0.0.1:{port}/infer"


def start_modelserver(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    # Its output goes to a file: a pipe nobody reads after the ready line could fill and stall it.
    argv = [sys.executable, "-m", "warmgate", "serve", "--demo", "--host", "127.0.0.1", "--port", "0",
            "--cache-dir", str(workdir / "cache")]  # fmt: skip
    proc, ready = spawn_until_line(
        argv, workdir / "modelserver.log", r"ready: (http://\S+)", 120, "the modelserver"
    )
    return proc, ready.group(1) + "/v2/models/demo/infer"


def demo_body() -> bytes:
    shape = Shape.model_validate(
        {"name": "bs1", "batch_size": 1, "inputs": {"input": {"datatype": "FP32", "dims": [3, 64, 64]}}}
    )
    request = make_adapter(ServerConfig(model="demo")).build(build_inputs(shape), 1)
    assert request.body is not None
    return request.body


def run_wrk(url: str, body: bytes, concurrency: int, duration: float, workdir: Path) -> dict[str, Any]:
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--latency", "-s", str(script), url]
    env = {**os.environ, "WARMGATE_BENCH_BODY": str(body_file)}
    out = subprocess.run(
        argv, capture_output=True, text=True, env=env, check=True, timeout=duration + 30
    ).stdout
    percentiles = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        percentiles[int(pct)] = float(value) * {"us": 1e-3, "ms": 1.0, "s": 1000.0}[unit]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": rps,
        "p_ms": percentiles,
        "errors": int(errors.group(1)) if errors else 0,
    }


async def run_loadgen(
    url: str, body: bytes, concurrency: int, duration: float, client: str
) -> dict[str, Any]:
    """The engine's closed loop over `client`: "lean" is what the engine sends the timed requests
    with (the adapter's HTTP/1.1 connections, protocols/_http1.py), "aiohttp" the session that it
    used before, kept here side by side."""
    target = Target(PreparedRequest("POST", url, body), 0)
    timeout = aiohttp.ClientTimeout(total=30)
    adapter = make_adapter(ServerConfig(url=url.rsplit("/", 1)[0], model="bench"))
    async with client_session(Config()) as session:
        if client == "lean":
            sender = functools.partial(adapter.send, session, timeout=timeout)
        else:
            sender = functools.partial(send, session, timeout=timeout)
        await closed_loop(sender, [target], [0], concurrency=concurrency, duration_s=0.5)
        cpu_before = time.process_time()
        samples = await closed_loop(sender, [target], [0], concurrency=concurrency, duration_s=duration)
        cpu = time.process_time() - cpu_before
        await adapter.aclose()
    ok = np.asarray([lat for lat, kind in zip(samples.latencies, samples.kinds, strict=True) if not kind])
    pcts = np.percentile(ok * 1000, [50, 75, 90, 99]) if ok.size else [float("nan")] * 4
    return {
        "requests": len(samples),
        "rps": ok.size / samples.elapsed_s,
        "p_ms": dict(zip((50, 75, 90, 99), (float(p) for p in pcts), strict=True)),
        "errors": len(samples) - int(ok.size),
        "cpu_s_per_1k": 1000 * cpu / max(1, len(samples)),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per tool and target (default 5)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="connections / closed-loop workers (default 4)"
    )
    parser.add_argument("--modelserver", action="store_true", help="also against `warmgate serve --demo`")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds per target, each running every tool once, back to back; medians are reported "
        "(default 5)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        targets = [("trivial aiohttp endpoint", start_trivial, b'{"inputs": []}')]
        if args.modelserver:
            targets.append(("warmgate serve --demo, bs1", start_modelserver, demo_body()))
        for name, start, body in targets:
            server, url = start(workdir)
            rounds: list[dict[str, Any]] = []
            try:
                run_wrk(url, body, args.concurrency, 1, workdir)  # warm the server and its connections
                for number in range(args.rounds):
                    print(f"{name}: round {number + 1}/{args.rounds}", file=sys.stderr, flush=True)
                    one = {"wrk": run_wrk(url, body, args.concurrency, args.duration, workdir)}
                    for tool, client in TOOLS.items():
                        one[tool] = asyncio.run(
                            run_loadgen(url, body, args.concurrency, args.duration, client)
                        )
                    rounds.append(one)
            finally:
                stop(server)
            results.append({"target": name, "body_bytes": len(body), "rounds": rounds})

    print(
        f"# loadgen vs wrk: {time.strftime('%Y-%m-%d')}, nproc {os.cpu_count()}, {cpu_model()}, "
        f"Python {platform.python_version()}, concurrency {args.concurrency}, {args.duration:g}s per run, "
        f"{args.rounds} rounds (medians; a ratio is the median of the rounds' paired ratios)\n"
    )
    print("| target | tool | req/s | p50 ms | p75 ms | p90 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        rounds = result["rounds"]
        for tool in ("wrk", *TOOLS):
            runs = [one[tool] for one in rounds]
            cells = [f"{median(r['rps'] for r in runs):.0f}"]
            cells += [f"{median(r['p_ms'][q] for r in runs):.2f}" for q in (50, 75, 90, 99)]
            cells.append(str(sum(r["errors"] for r in runs)))
            print(f"| {result['target']} | {tool} | " + " | ".join(cells) + " |")
        for tool in TOOLS:
            pairs = [(one[tool], one["wrk"]) for one in rounds]
            ratios = [f"{median(ours['rps'] / theirs['rps'] for ours, theirs in pairs):.2f}"]
            ratios += [
                f"{median(ours['p_ms'][q] / theirs['p_ms'][q] for ours, theirs in pairs):.2f}"
                for q in (50, 75, 90, 99)
            ]
            per_round = ", ".join(f"{ours['rps'] / theirs['rps']:.2f}" for ours, theirs in pairs)
            cpu = median(ours["cpu_s_per_1k"] for ours, _ in pairs)
            note = f"req/s ratio per round {per_round}; generator CPU {cpu:.3f} s per 1000 requests"
            print(f"| {result['target']} | {tool} / wrk | " + " | ".join(ratios) + f" | {note} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
