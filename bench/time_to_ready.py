"""Time to ready: where the seconds of a `warmgate run` go (not a timed test).

Each fresh start runs `warmgate run --once -c <generated warmup.yaml>` around `warmgate serve
--demo`, while this script watches from outside (every 5 ms): the server's own readiness
endpoints, status.json and the ready marker. warmgate spawns the server first and loads the
rest of itself while the server loads (warmgate/entrypoint/spawnfirst.py). A start is split into

  warmgate start      process exec, the few imports and reads spawning needs (server command,
                      state directory and its lock), until status.json's first `started_at`,
                      written just before the server's spawn
  server load         from warmgate entering waiting-for-server (once it has loaded itself)
                      until the server's /v2/health/ready and /v2/models/demo/ready both
                      answer 200, as seen by this script: what is left of the server's load
                      then (negative when the server was ready first; its whole load, counted
                      from the spawn, is report.phases["waiting-for-server"],
                      `waiting_for_server_s` in the records)
  polling delay       from then until warmgate noticed (status `warming` phase_started_at)
  warmup              report.phases["warming"]
  load test           report.phases["load-testing"]
  post-warm + gate    the rest until ready.json (post-warm check, gate, writing the marker)

The steps leave out one span of the total: from the spawn until waiting-for-server, warmgate
imports the rest of itself and validates the whole config, while the server loads; it delays ready
only where it outlasts the server's load. warmgate's own overhead is "warmgate start" + "polling
delay" + the part of "post-warm + gate" that is not the post-warm requests. (A config that
spawning first cannot read plainly is validated in full before the spawn, and all of that load is
in "warmgate start"; the one written here is plain.) For comparison, the same server is also
started alone (no warmgate) and timed from spawn to its own readiness. warmgate's CPU time (its
own process, not the server) is sampled too. Loopback only; bounded by --starts and per-start
deadlines.

    python bench/time_to_ready.py [--runtime onnx] [--starts 3] [--load-duration 3]
                                  [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    POLL_S,
    add_output_flags,
    add_warmup_flags,
    bench_parser,
    demo_server_argv,
    fmt,
    free_port,
    median_spread,
    oip_ready,
    prepare_demo,
    print_machine,
    spawn,
    spawn_warmgate,
    stop,
    wait_for,
    warmgate_config,
    write_json,
)

STEPS = ("warmgate start", "server load", "polling delay", "warmup", "load test", "post-warm + gate")


def bare_start(runtime: str, cache: Path, workdir: Path, env: dict[str, str]) -> float:
    port = free_port()
    url = f"http://{HOST}:{port}"
    started = time.monotonic()
    proc = spawn(demo_server_argv(runtime, port, cache), workdir / "bare-log.txt", env)
    try:
        return wait_for(lambda: oip_ready(url), 300, "bare server", alive=proc) - started
    finally:
        stop(proc)


def gated_start(
    runtime: str, cache: Path, workdir: Path, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    state = workdir / "state"
    config = warmgate_config(
        workdir / "warmup.yaml",
        command=demo_server_argv(runtime, port, cache),
        url=url,
        batch_sizes=[1, 4, 8],
        state_dir=state,
        count=args.count,
        load_duration_s=args.load_duration,
    )
    spawned = time.time()
    proc = spawn_warmgate(["run", "--once", "-c", str(config)], workdir / "log.txt",
                          {**env, "WARMGATE_STATE_DIR": str(state)})  # fmt: skip
    watcher = psutil.Process(proc.pid)
    seen: dict[str, float] = {}
    cpu_s = 0.0
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.Error):
                times = watcher.cpu_times()
                cpu_s = times.user + times.system
            if "healthy" not in seen and oip_ready(url):
                seen["healthy"] = time.time()
            with contextlib.suppress(OSError, ValueError):
                status = json.loads((state / "status.json").read_text())
                seen.setdefault("started_at", status["started_at"])
                if status["phase"] == "waiting-for-server":
                    seen.setdefault("waiting", status["phase_started_at"])
                if status["phase"] == "warming":
                    seen.setdefault("warming", status["phase_started_at"])
            if (state / "ready.json").exists():
                seen.setdefault("marker", time.time())
                break
            time.sleep(POLL_S)
        report = json.loads((state / "ready.json").read_text())
    finally:
        stop(proc)
    phases = report.get("phases", {})
    marker = report.get("created_at", seen["marker"])
    warming_end = seen["warming"] + phases.get("warming", 0.0) + phases.get("load-testing", 0.0)
    steps = {
        "warmgate start": seen["started_at"] - spawned,
        "server load": seen["healthy"] - seen["waiting"],
        "polling delay": max(0.0, seen["warming"] - seen["healthy"]),
        "warmup": phases.get("warming"),
        "load test": phases.get("load-testing"),
        "post-warm + gate": max(0.0, marker - warming_end),
    }
    return {
        "steps_s": steps,
        "total_s": marker - spawned,
        "post_warm_check_s": phases.get("post-warm-check"),
        "waiting_for_server_s": phases.get("waiting-for-server"),
        "warmgate_cpu_s": cpu_s,
        "attempts": report.get("attempts", 1),
        "load_test_requests": (report.get("load_test") or {}).get("requests"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch", "torch-compile"])
    parser.add_argument("--starts", type=int, default=3)
    add_warmup_flags(parser)
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.starts, args.count, args.load_duration = 1, 2, 0.5
    info = print_machine()
    records: list[dict[str, Any]] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory(prefix="warmgate-ttr-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        prepare_demo(args.runtime, cache)
        for start in range(args.starts):
            workdir = work / f"start-{start}"
            workdir.mkdir()
            env = (
                {"TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor")}
                if args.runtime == "torch-compile"
                else {}
            )
            bare.append(bare_start(args.runtime, cache, workdir, env))
            record = gated_start(args.runtime, cache, workdir, env, args)
            records.append(record)
            steps = ", ".join(f"{k} {fmt(v, 3)}" for k, v in record["steps_s"].items())
            print(
                f"start {start}: bare {bare[-1]:.2f} s; warmgate total {record['total_s']:.2f} s: {steps}",
                flush=True,
            )
    summary = {step: median_spread([r["steps_s"][step] for r in records]) for step in STEPS}
    summary["total (warmgate ready marker)"] = median_spread([r["total_s"] for r in records])
    summary["server alone, spawn to its own readiness"] = median_spread(bare)
    summary["warmgate process CPU"] = median_spread([r["warmgate_cpu_s"] for r in records])
    print()
    print("| step | median s | min-max s |")
    print("|---|---:|---:|")
    for name, stats in summary.items():
        print(f"| {name} | {fmt(stats['median'], 3)} | {fmt(stats['min'], 3)}-{fmt(stats['max'], 3)} |")
    write_json(args.json, {"machine": info, "settings": vars(args) | {"json": None}, "records": records,
                           "bare_s": bare, "summary": summary})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
