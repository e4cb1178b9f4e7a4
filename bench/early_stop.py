"""Early stopping of the load test: seconds saved, and whether the gate's verdict changed.

Each start spawns a fresh `warmgate serve --demo` (shapes bs1, bs4, bs8), waits for its own
readiness, and runs warmgate's engine (warmup, load test, post-warm check, gate) in this process
with `load_test.early_stop.enabled` on or off; starts alternate off/on so drift on a shared
machine hits both alike. Per start it records the load test's seconds, why it stopped, its
requests and p95, and the gate's verdict (with the failing checks).

    python bench/early_stop.py [--runtime onnx] [--pairs 4] [--load-duration 10]
                               [--p95-ms MS ...] [--json out.json] [--smoke]

`--p95-ms` may be given several times: each value is a separate series (an SLO far from the
measured p95 is settled at the minimums; one near it is the hard case). Without it: no SLO,
the p95 itself must converge.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
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
    spread,
    stop,
    wait_for,
    warmgate_config,
    write_json,
)

from warmgate.config import validate_config
from warmgate.entrypoint.engine.prover import Engine
from warmgate.state import StateWriter


async def prove(config_path: Path, server_pid: int) -> dict[str, Any]:
    raw = yaml.safe_load(config_path.read_text())
    config = validate_config(raw, str(config_path), {})
    state = StateWriter(config.state_dir)
    state.prepare()
    async with aiohttp.ClientSession() as session:
        report = await Engine(config, session, state, server_pid=server_pid).prove()
    load = report.load_test
    return {
        "passed": report.gate.passed,
        "failed_checks": sorted(check.name for check in report.gate.checks if not check.passed),
        "load_test_s": load.duration_s if load else None,
        "stopped": load.stopped if load else None,
        "requests": load.requests if load else None,
        "p95_ms": load.latency.p95_s * 1000 if load and load.latency.p95_s is not None else None,
    }


def one_start(
    runtime: str, cache: Path, workdir: Path, early: bool, p95_ms: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    path = warmgate_config(
        workdir / "warmup.yaml",
        command=["unused"],
        url=url,
        batch_sizes=[1, 4, 8],
        state_dir=workdir / "state",
        count=args.count,
        load_duration_s=args.load_duration,
        load_concurrency=args.concurrency,
    )
    raw = yaml.safe_load(path.read_text())
    raw["load_test"]["early_stop"] = {"enabled": early}
    if p95_ms is not None:
        raw["gate"]["p95_ms"] = p95_ms
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = spawn(demo_server_argv(runtime, port, cache), workdir / "server-log.txt")
    try:
        wait_for(lambda: oip_ready(url), 300, "demo server", alive=proc)
        started = time.monotonic()
        record = asyncio.run(prove(path, proc.pid))
        record["engine_s"] = time.monotonic() - started
    finally:
        stop(proc)
    return record | {"early_stop": early, "slo_p95_ms": p95_ms}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch", "torch-compile"])
    parser.add_argument("--pairs", type=int, default=4, help="off/on pairs per SLO (default 4)")
    # 10 s, not the other benchmarks' 3: the seconds early stopping saves are what this measures.
    add_warmup_flags(parser, load_duration_s=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--p95-ms", type=float, action="append", help="a p95 SLO series (repeatable)")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.count, args.load_duration = 1, 2, 3.0
    slos: list[float | None] = list(args.p95_ms) if args.p95_ms else [None]
    info = print_machine()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warmgate-earlystop-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        prepare_demo(args.runtime, cache)
        for slo in slos:
            for pair in range(args.pairs):
                # Alternate which goes first, so a drifting machine favours neither.
                for early in (False, True) if pair % 2 == 0 else (True, False):
                    workdir = work / f"slo-{slo}-pair-{pair}-{'on' if early else 'off'}"
                    workdir.mkdir()
                    record = one_start(args.runtime, cache, workdir, early, slo, args)
                    records.append(record)
                    print(
                        f"SLO p95 {slo} ms, early stop {'on ' if early else 'off'}: load test "
                        f"{record['load_test_s']:.2f} s ({record['stopped']}, {record['requests']} requests, "
                        f"p95 {fmt(record['p95_ms'], 2)} ms), gate "
                        f"{'passed' if record['passed'] else 'FAILED ' + ','.join(record['failed_checks'])}",
                        flush=True,
                    )
    print()
    print("| p95 SLO | early stop | load test s, median (min-max) | stopped | passed | engine s, median |")
    print("|---|---|---:|---|---:|---:|")
    summary = []
    for slo in slos:
        for early in (False, True):
            series = [r for r in records if r["slo_p95_ms"] == slo and r["early_stop"] == early]
            seconds = median_spread([r["load_test_s"] for r in series])
            engine = median_spread([r["engine_s"] for r in series])
            stopped = ", ".join(sorted({r["stopped"] for r in series}))
            passed = sum(r["passed"] for r in series)
            summary.append({"slo_p95_ms": slo, "early_stop": early, "load_test_s": seconds,
                            "engine_s": engine, "stopped": stopped, "passed": passed,
                            "n": len(series)})  # fmt: skip
            print(
                f"| {fmt(slo, 1) if slo is not None else 'none'} | {'on' if early else 'off'} | "
                f"{spread(seconds, 2)} | "
                f"{stopped} | "
                f"{passed}/{len(series)} | {fmt(engine['median'], 2)} |"
            )
    # Verdicts per pair: the same start conditions, early stop off and on.
    changed = 0
    for slo in slos:
        off = [r["passed"] for r in records if r["slo_p95_ms"] == slo and not r["early_stop"]]
        on = [r["passed"] for r in records if r["slo_p95_ms"] == slo and r["early_stop"]]
        changed += sum(a != b for a, b in zip(off, on, strict=True))
    print(f"\npairs whose verdict differed between off and on: {changed} of {len(records) // 2}")
    write_json(args.json, {"machine": info, "settings": vars(args) | {"json": None}, "records": records,
                           "summary": summary, "verdicts_changed": changed})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
