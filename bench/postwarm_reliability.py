"""Post-warm reliability: how often does the post-warm check refuse a warm server, and does it
still catch a cold shape? (issue 12, item 9; not a timed test)

Each start is a fresh `warmgate run --once` with `policy.on_failure: exit` (one attempt, no
retry to hide a refusal), a 1 s closed-loop load test at concurrency 2, and exit code 0 (gate
passed) or 80 (gate failed). Targets:

  demo    `warmgate serve --demo` (ONNX Runtime, one intra-op thread), shapes bs1, bs4, bs8;
  mlserver  MLServer 1.7 from .tools/mlserver-venv serving the same ONNX model through
          bench/mlserver_runtime.py (as bench/gate_effect.py's mlserver-onnx target);
  cold    tests/entrypoint/engine/fakeserver.py answering in 5 ms, where shape bs8 pays a
          one-time 50 ms (10x steady) on its 9th request: after its warmup of 8 (bs8 has load-test
          weight 0 and no concurrency check, so the count is exact), the post-warm check's first
          request pays it, as a JIT that needs more warmup than it got would. bs1 is a warm shape.

For demo and mlserver a start whose gate failed on `post_warm_ratio` is a false refusal; for cold
a start whose `post_warm_ratio[bs8]` passed is a miss. Any other failure is counted apart.

    python bench/postwarm_reliability.py [--targets demo,mlserver,cold] [--starts 50] [--cold-starts 20]
                                         [--json out.json] [--smoke]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    MLSERVER_VENV,
    REPO,
    add_output_flags,
    bench_parser,
    demo_server_argv,
    free_port,
    median_spread,
    prepare_demo,
    print_machine,
    warmgate_argv,
    warmgate_config,
    write_json,
)
from gate_effect import mlserver_available, mlserver_command

from warmgate.exitcodes import GATE_FAILED

FAKE_SERVER = REPO / "tests" / "entrypoint" / "engine" / "fakeserver.py"
ALL_TARGETS = ("demo", "mlserver", "cold")
# The cold shape: steady latency, its one-time cost, and the request that pays it.
COLD_STEADY_S = 0.005
COLD_COST_S = 10 * COLD_STEADY_S
COLD_WARMUP_COUNT = 8
# One line of the gate's summary: "  [FAIL] post_warm_ratio[bs8]     10.9 (limit 3)  shape bs8: ..."
CHECK_LINE = re.compile(r"\[(pass|FAIL)\] (\S+)\s+([-0-9.e+]+) \(limit ([-0-9.e+]+)\)")
ANY_CHECK = re.compile(r"\[(pass|FAIL)\] (\S+)")


def target_config(target: str, work: Path, port: int, cache: Path, load_s: float) -> Path:
    url = f"http://{HOST}:{port}"
    path = work / "warmup.yaml"
    if target == "cold":
        command = [sys.executable, str(FAKE_SERVER), "--port", str(port), "--delay", str(COLD_STEADY_S)]
        command += ["--cold-at-call", f"8:{COLD_WARMUP_COUNT + 1}:{COLD_COST_S}"]
        doc: dict[str, Any] = {
            "server": {"command": command, "url": url, "protocol": "oip", "model": "demo"},
            "shapes": [
                {"name": "bs1", "batch_size": 1, "inputs": {"input": {"dims": [4]}}, "count": 8},
                {
                    "name": "bs8",
                    "batch_size": 8,
                    "inputs": {"input": {"dims": [4]}},
                    "count": COLD_WARMUP_COUNT,
                    "weight": 0,
                    "compare": False,
                },
            ],
            "load_test": {"mode": "closed", "duration_s": load_s, "concurrency": 2},
            "state_dir": str(work / "state"),
        }
    else:
        command = (
            mlserver_command("mlserver-onnx", port, work, cache)
            if target == "mlserver"
            else demo_server_argv("onnx", port, cache, threads=1)
        )
        warmgate_config(
            path,
            command=command,
            url=url,
            batch_sizes=[1, 4, 8],
            state_dir=work / "state",
            load_duration_s=load_s,
        )
        doc = yaml.safe_load(path.read_text())
    # One attempt: a retry would hide exactly the refusals this counts.
    doc["policy"] = {"on_failure": "exit"}
    doc["gate"] = {"max_error_rate": 0.0, "max_first_to_steady_ratio": 3.0}
    doc["drain"] = {"quiet_period_s": 0, "grace_period_s": 10}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def one_start(target: str, work: Path, cache: Path, load_s: float, timeout_s: float) -> dict[str, Any]:
    work.mkdir(parents=True)
    config = target_config(target, work, free_port(), cache, load_s)
    started = time.monotonic()
    # Not common.spawn_warmgate: the gate's summary is parsed from the captured output (so the log
    # tail below is of that text, not common.tail of a file), and run's timeout bounds the start.
    try:
        proc = subprocess.run(
            [*warmgate_argv(), "run", "--once", "-c", str(config)],
            check=False,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout_s,
            # Its own session: a stray server child can never outlive the timeout in our group.
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return {"target": target, "exit_code": None, "error": f"no exit within {timeout_s:g}s"}
    output = proc.stdout + proc.stderr
    record: dict[str, Any] = {
        "target": target,
        "exit_code": proc.returncode,
        "seconds": round(time.monotonic() - started, 2),
        "ratios": {},
        "failed_checks": sorted({m.group(2) for m in ANY_CHECK.finditer(output) if m.group(1) == "FAIL"}),
    }
    for match in CHECK_LINE.finditer(output):
        mark, name, value, limit = match.groups()
        if name.startswith("post_warm_ratio["):
            record["ratios"][name[len("post_warm_ratio[") : -1]] = {
                "passed": mark == "pass",
                "ratio": float(value),
                "limit": float(limit),
            }
    if proc.returncode not in (0, GATE_FAILED) or not record["ratios"]:
        tail = " | ".join(output.strip().splitlines()[-6:])
        record["error"] = f"exit {proc.returncode}; log tail: {tail}"
    return record


def classify(record: dict[str, Any]) -> str:
    """warm targets: pass | false-refusal | other-failure; cold: detected | miss | other-failure."""
    if "error" in record:
        return "other-failure"
    ratio_failed = any(name.startswith("post_warm_ratio[") for name in record["failed_checks"])
    other_failed = [n for n in record["failed_checks"] if not n.startswith("post_warm_ratio[")]
    if record["target"] == "cold":
        cold = record["ratios"].get("bs8")
        if cold is None:
            return "other-failure"
        return "miss" if cold["passed"] else "detected"
    if other_failed:
        return "other-failure"
    return "false-refusal" if ratio_failed else "pass"


def summarise(records: list[dict[str, Any]], targets: list[str]) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        mine = [r for r in records if r["target"] == target]
        outcomes = [r["outcome"] for r in mine]
        counts = {outcome: outcomes.count(outcome) for outcome in sorted(set(outcomes))}
        judged = [s for r in mine for s in r.get("ratios", {}).values()]
        warm_shapes = [
            s for r in mine for name, s in r.get("ratios", {}).items() if target != "cold" or name != "bs8"
        ]
        row: dict[str, Any] = {
            "target": target,
            "starts": len(mine),
            "outcomes": counts,
            "ratio_warm_shapes": median_spread([s["ratio"] for s in warm_shapes]),
            "limit": median_spread([s["limit"] for s in judged]),
        }
        if target == "cold":
            row["ratio_cold_shape"] = median_spread(
                [r["ratios"]["bs8"]["ratio"] for r in mine if "bs8" in r.get("ratios", {})]
            )
            row["detection_rate"] = counts.get("detected", 0) / len(mine) if mine else None
            row["warm_shape_refusals"] = sum(
                1 for r in mine if not r.get("ratios", {}).get("bs1", {}).get("passed", True)
            )
        else:
            row["false_refusal_rate"] = counts.get("false-refusal", 0) / len(mine) if mine else None
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument(
        "--starts", type=int, default=50, help="fresh starts per warm target (demo, mlserver)"
    )
    parser.add_argument("--cold-starts", type=int, default=20, help="fresh starts of the cold target")
    parser.add_argument("--load-s", type=float, default=1.0, help="load-test duration per start")
    add_output_flags(
        parser,
        json_help="write every record and the summary here",
        smoke_help="one start per target: keeps the script alive",
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "mlserver" in targets and not mlserver_available():
        parser.error(f"target mlserver needs {MLSERVER_VENV}/bin/mlserver (see docs/benchmarks.md)")
    starts = {t: (1 if args.smoke else args.cold_starts if t == "cold" else args.starts) for t in targets}
    load_s = 0.5 if args.smoke else args.load_s

    info = print_machine()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warmgate-postwarm-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        if {"demo", "mlserver"} & set(targets):
            prepare_demo("onnx", cache)
        for target in targets:
            for start in range(starts[target]):
                record = one_start(target, work / f"{target}-{start}", cache, load_s, timeout_s=180)
                record["start"] = start
                record["outcome"] = classify(record)
                records.append(record)
                ratios = ", ".join(
                    f"{name} {s['ratio']:.2f}/{s['limit']:.3g}{'' if s['passed'] else ' FAIL'}"
                    for name, s in record.get("ratios", {}).items()
                )
                print(
                    f"{target} {start}: {record['outcome']} (exit {record['exit_code']}, "
                    f"{record.get('seconds', '-')} s) ratio/limit {ratios} {record.get('error', '')}",
                    flush=True,
                )
    rows = summarise(records, targets)
    print()
    for row in rows:
        print(row)
    write_json(args.json, {"machine": info, "load_s": load_s, "records": records, "summary": rows})
    return 1 if any(r["outcome"] == "other-failure" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
