"""Scale-out: p95 while new replicas join behind a real load balancer, admitted when their port
answers (a) or when warmgate's sidecar says ready (b) (not a timed test).

    haproxy (Debian package) on 127.0.0.1, round robin, health checks every 250 ms
      replica 1: warm before the load starts
      replicas 2, 3: started at --join-at seconds into the load
    constant-rate load: warmgate's own open-loop generator (warmgate.entrypoint.engine.loadgen.open_loop),
      latency from each request's intended send time (coordinated omission corrected), a mix of
      batch 1 and batch 4 requests (3:1)

Variant (a): replicas are the bare model server; haproxy's check is a TCP connect to the model
port, which is what a Kubernetes tcpSocket readiness probe (or no probe at all) gives.
Variant (b): each replica is `warmgate run` around the same server plus a `warmgate probe`
sidecar; haproxy's check is an HTTP GET of the sidecar's /readyz (`check port <sidecar>`), the way
Kubernetes endpoints follow a readinessProbe pointed at the sidecar.

Reports, per variant: steady p95 (before the join), the worst p95 over any --window seconds
(by intended send time) from the join to the end, their ratio, errors, and when haproxy admitted
each new replica; with --plot, the latency timeline of both variants as a PNG.
Loopback only; the load is bounded in count and time; every process is stopped at the end.

    python bench/scale_out.py [--runtime torch] [--rate 20] [--join-at 10] [--duration 50]
                              [--plot docs/scale_out.png] [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    Client,
    add_output_flags,
    bake,
    bench_parser,
    demo_request,
    demo_server_argv,
    fmt,
    free_port,
    http_status,
    prepare_demo,
    print_machine,
    spawn,
    spawn_warmgate,
    stop,
    wait_for,
    warmgate_config,
    write_json,
)

from warmgate.entrypoint.engine.loadgen import LoadSamples, Target, open_loop, weighted_schedule
from warmgate.protocols import send

BATCH_SIZES = (1, 4)
WEIGHTS = (3, 1)
# haproxy's health-check period: admission is at most this late after the check would pass.
CHECK_INTERVAL = "250ms"
STATS_POLL_S = 0.25


@dataclass
class TimedSamples(LoadSamples):
    """LoadSamples that also keep each request's completion time (for the timeline)."""

    done_at: list[float] = field(default_factory=list)

    def record(self, label: int, latency_s: float, kind: str) -> None:
        super().record(label, latency_s, kind)
        self.done_at.append(time.monotonic())


@dataclass
class Replica:
    name: str
    model_port: int
    probe_port: int
    workdir: Path
    procs: list[Any] = field(default_factory=list)


def haproxy_config(path: Path, lb_port: int, stats_port: int, replicas: list[Replica], gated: bool) -> None:
    check = []
    if gated:
        check = [
            "    option httpchk",
            "    http-check send meth GET uri /readyz",
            "    http-check expect status 200",
        ]
    servers = [
        f"    server {r.name} {HOST}:{r.model_port} check" + (f" port {r.probe_port}" if gated else "")
        for r in replicas
    ]
    path.write_text(
        "\n".join(
            [
                "global",
                "    maxconn 4096",
                "defaults",
                "    mode http",
                "    timeout connect 2s",
                "    timeout client 120s",
                "    timeout server 120s",
                "    option redispatch",
                "    retries 2",
                "frontend models_in",
                f"    bind {HOST}:{lb_port}",
                "    default_backend models",
                "backend models",
                "    balance roundrobin",
                *check,
                f"    default-server inter {CHECK_INTERVAL} fall 2 rise 1",
                *servers,
                "listen stats",
                f"    bind {HOST}:{stats_port}",
                "    stats enable",
                "    stats uri /stats",
                "",
            ]
        )
    )


def replica_server(runtime: str, port: int, cache: Path, warm_cache: bool) -> list[str]:
    # One intra-op thread per replica: three replicas share two cores.
    server = demo_server_argv(runtime, port, cache, threads=1)
    if runtime == "torch-compile" and not warm_cache:
        # Every replica compiles for itself, as the first version measured: the shared cache
        # directory (it holds the demo model) would otherwise hand replica 1's compiles to 2 and 3.
        server.append("--no-compile-cache")
    return server


def start_replica(
    replica: Replica,
    runtime: str,
    cache: Path,
    gated: bool,
    cpus: str | None = None,
    warm_cache: bool = False,
) -> None:
    replica.workdir.mkdir(parents=True, exist_ok=True)
    env = {}
    if warm_cache:
        # The pod's cache volume: warmgate exports the compile-cache variables under it.
        env["WARMGATE_CACHE_DIR"] = str(cache)
    elif runtime == "torch-compile":
        env["TORCHINDUCTOR_CACHE_DIR"] = str(replica.workdir / "inductor")
    server = replica_server(runtime, replica.model_port, cache, warm_cache)
    log = replica.workdir / "log.txt"
    # New replicas on their own CPU stand in for pods scheduled on other nodes; children inherit it.
    pin = ["taskset", "-c", cpus] if cpus else []
    if not gated:
        replica.procs.append(spawn([*pin, *server], log, env))
        return
    state = replica.workdir / "state"
    config = warmgate_config(
        replica.workdir / "warmup.yaml",
        command=server,
        url=f"http://{HOST}:{replica.model_port}",
        batch_sizes=BATCH_SIZES,
        state_dir=state,
        count=8,
        load_duration_s=2.0,
        load_concurrency=1,
        probe_port=replica.probe_port,
    )
    env["WARMGATE_STATE_DIR"] = str(state)
    replica.procs.append(spawn_warmgate(["run", "-c", str(config)], log, env, wrapper=pin))
    probe = ["probe", "-c", str(config), "--host", HOST, "--port", str(replica.probe_port)]
    replica.procs.append(spawn_warmgate(probe, replica.workdir / "probe-log.txt", env, wrapper=pin))


def bake_cache(runtime: str, cache: Path, work: Path) -> float:
    """--warm-cache: `warmgate bake` fills the shared cache once, as a build step or Job would before
    the first pod of a version; returns its seconds."""
    port = free_port()
    config = warmgate_config(
        work / "bake.yaml",
        command=replica_server(runtime, port, cache, warm_cache=True),
        url=f"http://{HOST}:{port}",
        batch_sizes=BATCH_SIZES,
        state_dir=work / "bake-state",
        count=8,
        load_duration_s=2.0,
        load_concurrency=1,
    )
    return bake(config, cache, work / "bake-log.txt")


def warm_directly(url: str, count: int) -> None:
    """Replica 1 of variant (a) is warmed by hand before the load, so both variants start warm."""
    client = Client(url)
    try:
        for bs in BATCH_SIZES:
            request = demo_request(url, bs)
            for _ in range(count):
                client.post(request)
    finally:
        client.close()


async def poll_stats(session: aiohttp.ClientSession, url: str, stop_at: float, out: list[Any]) -> None:
    while time.monotonic() < stop_at:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                text = await response.text()
            header, *lines = text.splitlines()
            columns = header.lstrip("# ").split(",")
            status_col, name_col, px_col = (
                columns.index("status"),
                columns.index("svname"),
                columns.index("pxname"),
            )
            states = {}
            for line in lines:
                cells = line.split(",")
                if len(cells) > status_col and cells[px_col] == "models" and cells[name_col].startswith("r"):
                    states[cells[name_col]] = cells[status_col]
            out.append((time.monotonic(), states))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
        await asyncio.sleep(STATS_POLL_S)


async def drive(
    lb_url: str, stats_url: str, args: argparse.Namespace, join: Any
) -> tuple[TimedSamples, float, list[Any]]:
    targets = [Target(demo_request(lb_url, bs), i) for i, bs in enumerate(BATCH_SIZES)]
    schedule = weighted_schedule(WEIGHTS)
    samples = TimedSamples()
    stats: list[Any] = []
    timeout = aiohttp.ClientTimeout(total=120)
    # No connection cap of our own: requests stuck on a cold replica must not hold back the ones
    # haproxy would send to a warm one (open_loop caps in-flight requests at 1024 anyway).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()

        async def join_later() -> None:
            await asyncio.sleep(args.join_at)
            await asyncio.to_thread(join)

        joiner = asyncio.create_task(join_later())
        poller = asyncio.create_task(poll_stats(session, stats_url, start + args.duration + 5, stats))
        await open_loop(
            functools.partial(send, session, timeout=timeout), targets, schedule, rate=args.rate,
            duration_s=args.duration,
            max_requests=int(args.rate * args.duration), samples=samples,
        )  # fmt: skip
        await joiner
        poller.cancel()
    return samples, start, stats


def analyse(
    samples: TimedSamples, start: float, stats: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    latency = np.asarray(samples.latencies)
    sent = np.asarray(samples.done_at) - latency - start
    ok = np.asarray([k == "" for k in samples.kinds], dtype=bool)
    order = np.argsort(sent)
    timeline = [
        {
            "t": float(sent[i]),
            "ms": float(latency[i] * 1000),
            "ok": bool(ok[i]),
            "shape": int(samples.labels[i]),
        }
        for i in order
    ]
    settle = min(2.0, args.join_at / 2)
    steady_mask = ok & (sent >= settle) & (sent < args.join_at)
    steady_p95 = float(np.percentile(latency[steady_mask], 95) * 1000) if steady_mask.any() else None
    windows = []
    edge = args.join_at
    while edge < args.duration:
        mask = ok & (sent >= edge) & (sent < edge + args.window)
        if mask.sum() >= 3:
            windows.append(
                {
                    "start": edge,
                    "p95_ms": float(np.percentile(latency[mask], 95) * 1000),
                    "n": int(mask.sum()),
                }
            )
        edge += args.window
    worst = max(windows, key=lambda w: w["p95_ms"]) if windows else None
    all_windows = []
    edge = 0.0
    while edge < args.duration:
        mask = ok & (sent >= edge) & (sent < edge + args.window)
        if mask.sum() >= 3:
            all_windows.append({"start": edge, "p95_ms": float(np.percentile(latency[mask], 95) * 1000)})
        edge += args.window
    admitted: dict[str, float | None] = {"r2": None, "r3": None}
    for at, states in stats:
        for name in admitted:
            if (
                admitted[name] is None
                and states.get(name, "").startswith("UP")
                and at - start >= args.join_at
            ):
                admitted[name] = at - start
    errors_after = int((~ok & (sent >= args.join_at)).sum())
    return {
        "requests": len(samples),
        "errors": int((~ok).sum()),
        "errors_during_scale_out": errors_after,
        "error_kinds": {k: samples.kinds.count(k) for k in set(samples.kinds) if k},
        "steady_p95_ms": steady_p95,
        "worst_window_p95_ms": worst["p95_ms"] if worst else None,
        "worst_window_start_s": worst["start"] if worst else None,
        "ratio": worst["p95_ms"] / steady_p95 if worst and steady_p95 else None,
        "admitted_s": admitted,
        "windows": all_windows,
        "timeline": timeline,
    }


def run_variant(variant: str, args: argparse.Namespace, work: Path, cache: Path) -> dict[str, Any]:
    gated = variant == "b"
    replicas = [Replica(f"r{i}", free_port(), free_port(), work / f"{variant}-r{i}") for i in (1, 2, 3)]
    lb_port, stats_port = free_port(), free_port()
    haproxy_cfg = work / f"haproxy-{variant}.cfg"
    haproxy_config(haproxy_cfg, lb_port, stats_port, replicas, gated)
    lb_url, stats_url = f"http://{HOST}:{lb_port}", f"http://{HOST}:{stats_port}/stats;csv"
    haproxy = None
    saved_affinity = os.sched_getaffinity(0)
    if args.pin:
        # This process (the load generator), haproxy and replica 1 on CPU 0; replicas 2 and 3 on CPU 1.
        os.sched_setaffinity(0, {0})
    try:
        first = replicas[0]
        start_replica(first, args.runtime, cache, gated, warm_cache=args.warm_cache)
        url = f"http://{HOST}:{first.model_port}"
        if gated:
            wait_for(
                lambda: http_status(f"http://{HOST}:{first.probe_port}/readyz") == 200, 300, "replica 1 ready"
            )
        else:
            wait_for(
                lambda: http_status(url + "/v2/health/ready") == 200,
                300,
                "replica 1 ready",
                alive=first.procs[0],
            )
            warm_directly(url, 10)
        haproxy = spawn(["haproxy", "-db", "-f", str(haproxy_cfg)], work / f"haproxy-{variant}.log")

        def settled() -> bool:
            status = http_status(stats_url)
            if status != 200:
                return False
            import urllib.request

            with urllib.request.urlopen(stats_url, timeout=1) as response:
                text = response.read().decode()
            down = [line for line in text.splitlines() if line.startswith("models,r") and ",DOWN," in line]
            up = [line for line in text.splitlines() if line.startswith("models,r1,") and ",UP," in line]
            return len(down) == 2 and len(up) == 1

        wait_for(settled, 20, "haproxy: r1 UP, r2 and r3 DOWN", alive=haproxy)

        def join() -> None:
            for replica in replicas[1:]:
                start_replica(replica, args.runtime, cache, gated, "1" if args.pin else None, args.warm_cache)

        samples, start, stats = asyncio.run(drive(lb_url, stats_url, args, join))
        result = analyse(samples, start, stats, args)
        result["variant"] = variant
        result["admission"] = (
            "sidecar /readyz = 200 (HTTP check)" if gated else "model port answers (TCP check)"
        )
        result["pinned"] = bool(args.pin)
        result["warm_cache"] = bool(args.warm_cache)
        result["join_to_admitted_s"] = {
            name: None if at is None else at - args.join_at for name, at in result["admitted_s"].items()
        }
        return result
    finally:
        os.sched_setaffinity(0, saved_affinity)
        if haproxy is not None:
            stop(haproxy)
        for replica in replicas:
            for proc in reversed(replica.procs):
                stop(proc)


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)), sharex=True, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, result in zip(axes, results, strict=True):
        ok = [p for p in result["timeline"] if p["ok"]]
        bad = [p for p in result["timeline"] if not p["ok"]]
        ax.scatter([p["t"] for p in ok], [p["ms"] for p in ok], s=4, alpha=0.35, label="request latency")
        if bad:
            ax.scatter([p["t"] for p in bad], [max(p["ms"], 1) for p in bad], s=10, marker="x", color="red",
                       label="failed request")  # fmt: skip
        win = result["windows"]
        ax.step([w["start"] for w in win], [w["p95_ms"] for w in win], where="post", color="black",
                label=f"p95 per {args.window:g} s window")  # fmt: skip
        ax.axvline(args.join_at, color="grey", linestyle="--", label="replicas 2, 3 start")
        for name, at in result["admitted_s"].items():
            if at is not None:
                ax.axvline(at, color="green", linestyle=":", label=f"haproxy admits {name}")
        title = {"a": "(a) admitted when the port answers", "b": "(b) admitted when warmgate's /readyz = 200"}
        ax.set_title(
            f"{title[result['variant']]}: steady p95 {fmt(result['steady_p95_ms'])} ms, "
            f"worst window p95 {fmt(result['worst_window_p95_ms'])} ms ({fmt(result['ratio'], 1)}x), "
            f"{result['errors_during_scale_out']} errors",
            fontsize=9,
        )
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1].set_xlabel(f"seconds since the load started ({args.rate:g} req/s, {args.runtime})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--runtime", default="torch", choices=["onnx", "torch", "torch-compile"])
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    parser.add_argument("--join-at", type=float, default=10.0, help="seconds into the load (default 10)")
    parser.add_argument("--duration", type=float, default=50.0, help="length of the load (default 50 s)")
    parser.add_argument("--window", type=float, default=1.0, help="p95 window, seconds (default 1)")
    parser.add_argument("--variants", default="a,b")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="replica 1, haproxy and the generator on CPU 0, new replicas on CPU 1 (default: with >= 2 CPUs)",
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="every replica mounts one artifact cache that `warmgate bake` filled before the load "
        "(default: none; torch-compile replicas each compile for themselves)",
    )
    parser.add_argument("--plot", type=Path, help="write the latency timeline PNG here (needs matplotlib)")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.runtime, args.rate, args.join_at, args.duration = "onnx", 10.0, 2.0, 5.0
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (Debian: apt-get install haproxy)")
    info = print_machine()
    results = []
    with tempfile.TemporaryDirectory(prefix="warmgate-scale-out-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        prepare_demo(args.runtime, cache)
        if args.warm_cache:
            baked = bake_cache(args.runtime, cache, work)
            print(f"warmgate bake filled the shared cache in {baked:.1f} s", flush=True)
        for variant in args.variants.split(","):
            result = run_variant(variant, args, work, cache)
            results.append(result)
            print(
                f"({variant}) {result['admission']}: steady p95 {fmt(result['steady_p95_ms'])} ms, worst "
                f"{args.window:g}s-window p95 {fmt(result['worst_window_p95_ms'])} ms at "
                f"{fmt(result['worst_window_start_s'])} s, ratio {fmt(result['ratio'], 2)}x, "
                f"errors {result['errors']} {result['error_kinds']}, admitted {result['admitted_s']} "
                f"(join to admitted {result['join_to_admitted_s']})",
                flush=True,
            )
    print()
    print(
        "| variant | admission | steady p95 ms | worst window p95 ms | ratio | errors "
        "| r2, r3 admitted at s |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    for r in results:
        admitted = ", ".join(fmt(v) for v in r["admitted_s"].values())
        print(
            f"| ({r['variant']}) | {r['admission']} | {fmt(r['steady_p95_ms'])} "
            f"| {fmt(r['worst_window_p95_ms'])} "
            f"| {fmt(r['ratio'], 1)}x | {r['errors']} | {admitted} |"
        )
    if args.plot:
        plot(results, args, args.plot)
        print(f"plot: {args.plot}")
    settings = {k: v for k, v in vars(args).items() if k not in ("plot", "json")}
    write_json(args.json, {"machine": info, "settings": settings, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
