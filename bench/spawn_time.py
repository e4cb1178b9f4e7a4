"""Spawn first: exec -> spawn and warmgate's own share of time to ready, before and after (not a
timed test).

Two checkouts of warmgate run side by side, alternated start by start so both see the same
machine: `--before` (e.g. a `git worktree add /tmp/old <commit>`) and `--after` (default: this
repository). Each is put first on PYTHONPATH for a fresh `python -m warmgate run --once`.

The server is a stand-in written here: on exec it records `time.time()`, waits `--load` seconds
(the model load), listens, records that moment, and answers every request at once. So:

  exec -> spawn     the server's recorded start minus the moment just before this script's
                    Popen of warmgate, minus the stand-in's own start-up cost (calibrated by
                    starting it directly, median subtracted)
  time to ready     ready.json's mtime minus the same exec moment
  warmgate's share  time to ready - server load (its start -> listening) - warming - load test
                    - post-warm check (the phases of the report): the spawn delay, noticing
                    the server, and writing state, i.e. what warmgate itself adds

Medians over fresh starts, idle and with `--busy N` busy-looping processes (a loaded node).

    python bench/spawn_time.py --before /tmp/old [--starts 7] [--load 1.0] [--busy 2]
                               [--json out.json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

# The stand-in server: `server.py STAMPS PORT LOAD_S`. Imports only what it needs after the first
# stamp, so its own start-up cost (calibrated) is a few milliseconds of interpreter start.
SERVER = """\
import sys, time
started = time.time()
stamps, port, load_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
import http.server, json, os
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"y": [0]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
time.sleep(max(0.0, load_s - (time.time() - started)))
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
with open(stamps + ".tmp", "w") as out:
    json.dump({"started": started, "listening": time.time()}, out)
os.replace(stamps + ".tmp", stamps)
server.serve_forever()
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, state_dir: Path, port: int, load_test_s: float) -> None:
    import yaml

    doc = {
        "server": {
            "url": f"http://{HOST}:{port}",
            "protocol": "http",
            "health_path": "/",
            "http": {"path": "/"},
            "start_timeout_s": 60,
        },
        "shapes": [
            {"name": "s", "batch_size": 1, "inputs": {"x": {"dims": [4], "data": "zero"}}, "count": 4}
        ],
        "load_test": {"duration_s": load_test_s, "concurrency": 2},
        "gate": {"max_first_to_steady_ratio": None, "max_error_rate": 0.0},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0, "grace_period_s": 5},
    }
    path.write_text(yaml.safe_dump(doc))


def calibrate(work: Path, server: Path, load_s: float, starts: int) -> float:
    """The stand-in's own cost from its exec to its first stamp (median), started directly."""
    costs = []
    for _ in range(starts):
        stamps = work / "calibrate.json"
        stamps.unlink(missing_ok=True)
        port = free_port()
        begun = time.time()
        proc = subprocess.Popen([sys.executable, "-S", str(server), str(stamps), str(port), "0"])
        try:
            deadline = time.monotonic() + 10
            while not stamps.exists() and time.monotonic() < deadline:
                time.sleep(0.002)
            costs.append(json.loads(stamps.read_text())["started"] - begun)
        finally:
            proc.kill()
            proc.wait()
    return statistics.median(costs)


def one_start(checkout: Path, work: Path, server: Path, load_s: float, load_test_s: float) -> dict[str, Any]:
    state_dir = work / f"state-{checkout.name}"
    stamps = work / "stamps.json"
    stamps.unlink(missing_ok=True)
    port = free_port()
    config = work / "warmup.yaml"
    write_config(config, state_dir, port, load_test_s)
    (state_dir / "ready.json").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMGATE_")}
    env["PYTHONPATH"] = str(checkout)
    argv = [sys.executable, "-m", "warmgate", "run", "-c", str(config), "--once", "--"]
    argv += [sys.executable, "-S", str(server), str(stamps), str(port), str(load_s)]
    log = work / "warmgate.log"
    with log.open("wb") as out:
        begun = time.time()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
        code = proc.wait(timeout=120)
    if code != 0:
        raise RuntimeError(f"warmgate ({checkout}) exited {code}:\n{log.read_text()[-3000:]}")
    times = json.loads(stamps.read_text())
    report = json.loads((state_dir / "ready.json").read_text())
    ready_at = (state_dir / "ready.json").stat().st_mtime
    phases = report.get("phases", {})
    proving = sum(phases.get(name, 0.0) for name in ("warming", "load-testing", "post-warm-check"))
    server_load = times["listening"] - times["started"]
    to_ready = ready_at - begun
    return {
        "spawn_raw_s": times["started"] - begun,
        "time_to_ready_s": to_ready,
        "server_load_s": server_load,
        "proving_s": proving,
        "own_share_s": to_ready - server_load - proving,
    }


def busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--after", type=Path, default=REPO, help="checkout of the new code")
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--load", type=float, default=1.0, help="the stand-in's model load, seconds")
    parser.add_argument("--load-test", type=float, default=0.5, help="load_test.duration_s")
    parser.add_argument("--busy", type=int, default=2, help="busy loops for the loaded runs")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="2 starts, idle only, short load")
    args = parser.parse_args()
    if args.smoke:
        args.starts, args.load, args.load_test, args.busy = 2, 0.2, 0.2, 0
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine

    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="spawn-time-") as tmp:
        work = Path(tmp)
        server = work / "server.py"
        server.write_text(SERVER)
        conditions = [("idle", 0)] + ([("busy", args.busy)] if args.busy else [])
        for condition, loops in conditions:
            hogs = busy_loops(loops)
            try:
                overhead = calibrate(work, server, args.load, max(3, args.starts))
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
                for _ in range(args.starts):
                    for name, checkout in checkouts.items():  # alternated: same machine state
                        runs[name].append(one_start(checkout, work, server, args.load, args.load_test))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            summary: dict[str, Any] = {"stand_in_start_s": overhead, "busy_loops": loops}
            for name, samples in runs.items():
                summary[name] = {
                    "exec_to_spawn_s": median([s["spawn_raw_s"] - overhead for s in samples]),
                    "exec_to_spawn_max_s": max(s["spawn_raw_s"] - overhead for s in samples),
                    "time_to_ready_s": median([s["time_to_ready_s"] for s in samples]),
                    "own_share_s": median([s["own_share_s"] for s in samples]),
                    "server_load_s": median([s["server_load_s"] for s in samples]),
                    "proving_s": median([s["proving_s"] for s in samples]),
                    "starts": len(samples),
                    "samples": samples,
                }
            results[condition] = summary
            print(f"{condition} ({loops} busy loops, stand-in start {overhead * 1000:.1f} ms subtracted):")
            print(f"  {'':8} {'exec->spawn':>12} {'(max)':>8} {'own share':>10} {'to ready':>9} {'load':>6}")
            for name in checkouts:
                row = summary[name]
                spawn, worst = row["exec_to_spawn_s"], row["exec_to_spawn_max_s"]
                print(
                    f"  {name:8} {spawn:>11.3f}s {worst:>7.3f}s {row['own_share_s']:>9.3f}s "
                    f"{row['time_to_ready_s']:>8.3f}s {row['server_load_s']:>5.2f}s"
                )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
