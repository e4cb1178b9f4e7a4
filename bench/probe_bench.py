"""Benchmark of the probe sidecar (`warmgate probe`), loopback only, bounded in time.

    .venv/bin/python bench/probe_bench.py [--rate 300] [--duration 5] [--json results.json]
                                          [--checkout DIR]

`--checkout DIR` runs `warmgate probe` from another source tree with this venv, for a before/after
pair: `git worktree add /tmp/before <commit>`, then one run with and one without it.

Measures, with the readiness gate off and the default probe settings (check timeout 0.5 s,
check cache 1 s):
- startup: time from spawning `warmgate probe` to its first 200 on /startupz (ready state on disk);
- idle RSS of the sidecar process (VmRSS), and RSS after the load below;
- /readyz latency p50/p99/max at `--rate` requests per second for `--duration` seconds, first
  unloaded, then while one CPU-bound process per core saturates the machine;
- /metrics latency (a scrape with a full report) unloaded.

Each probe request opens a new TCP connection, as the kubelet's HTTP probes do. The model server
is a small fake in its own process that answers the Open Inference Protocol health paths.
Everything this script starts is stopped by its pid before it exits.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from warmgate.state import (
    GateCheck,
    GateVerdict,
    LatencyStats,
    LoadTestReport,
    MemoryReport,
    Phase,
    Report,
    ShapeReport,
    StateWriter,
)

# The whole run must end even if something hangs.
HARD_LIMIT_S = 180
STARTUP_POLL_S = 0.002

FAKE_MODEL_SERVER = """
import sys
from aiohttp import web
async def ok(request):
    return web.json_response({"ready": True})
app = web.Application()
for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/{model}/ready"):
    app.router.add_get(path, ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
CPU_HOG = "while True:\n    pass\n"


# `warmgate probe` builds the whole CLI, so it imports every part's subcommand module. This entry
# registers only the probe's, to show what the sidecar itself costs.
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, timeout: float = 2.0) -> int:
    """One GET on a fresh connection (as the kubelet probes); returns the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for_200(port: int, path: str, deadline: float) -> float:
    while True:
        try:
            if get(port, path, timeout=1.0) == 200:
                return time.perf_counter()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no 200 from {path} on port {port} in time")
        time.sleep(STARTUP_POLL_S)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def paced_latencies(port: int, path: str, rate: float, duration: float) -> dict[str, Any]:
    """Requests on an open-loop schedule at `rate`/s, one at a time.

    `p50_ms`/`p99_ms`/`max_ms` are response times (send to full response), what the kubelet's
    1 s probe timeout applies to. `lag_p99_ms` is how late requests started against the schedule:
    under saturation the client itself is starved too, and that shows there, not as probe time.
    """
    interval = 1.0 / rate
    count = int(rate * duration)
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    for i in range(count):
        scheduled = start + i * interval
        now = time.perf_counter()
        if scheduled > now:
            time.sleep(scheduled - now)
        sent = time.perf_counter()
        try:
            status = get(port, path)
        except OSError:
            status = -1
        latencies.append(time.perf_counter() - sent)
        lags.append(sent - scheduled)
        statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    lags.sort()
    return {
        "requests": count,
        "achieved_rps": round(count / elapsed, 1),
        "statuses": statuses,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
        "over_1s": sum(1 for v in latencies if v >= 1.0),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 3),
    }


def bench_report(instance_id: str) -> Report:
    steady = LatencyStats(
        count=40, mean_s=0.011, p50_s=0.010, p90_s=0.013, p95_s=0.014, p99_s=0.02, max_s=0.025
    )
    shapes = [
        ShapeReport(
            name=f"bs{b}", batch_size=b, requests=8, first_s=0.9, steady=steady, first_to_steady_ratio=90.0
        )
        for b in (1, 2, 4, 8)
    ]
    return Report(
        instance_id=instance_id,
        created_at=time.time(),
        server_url="http://127.0.0.1",
        protocol="oip",
        model="demo",
        phases={"waiting-for-server": 1.5, "warming": 4.25, "load-testing": 5.0},
        shapes=shapes,
        load_test=LoadTestReport(
            mode="closed", duration_s=5, requests=480, throughput_rps=95.5, latency=steady
        ),
        memory=MemoryReport(peak_rss_bytes=2**29, limit_bytes=2**31),
        gate=GateVerdict(passed=True, checks=[GateCheck(name="error_rate", passed=True)], reason="ok"),
    )


def nproc() -> int:
    """What `nproc` prints: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": nproc(),
        "cpu": model,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        # Other work on the machine skews "unloaded": say how busy it was when the run began.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def warmgate_command(checkout: Path | None) -> list[str]:
    if checkout is not None:
        # `-c` puts the working directory (the checkout) first on sys.path: its warmgate is run.
        return [sys.executable, "-c", "from warmgate.cli import main; main()"]
    script = Path(sys.executable).with_name("warmgate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from warmgate.cli import main; main()"]


def run(rate: float, duration: float, checkout: Path | None = None) -> dict[str, Any]:
    started: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + HARD_LIMIT_S
    try:
        with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
            model_port, probe_port = free_port(), free_port()
            started.append(subprocess.Popen([sys.executable, "-c", FAKE_MODEL_SERVER, str(model_port)]))
            wait_for_200(model_port, "/v2/health/ready", deadline)

            state_dir = Path(tmp) / "state"
            writer = StateWriter(state_dir)
            writer.prepare()
            writer.write_ready(bench_report(writer.instance_id))
            writer.set_phase(Phase.READY, "ready")
            config = Path(tmp) / "warmup.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "state_dir": str(state_dir),
                        "server": {"url": f"http://127.0.0.1:{model_port}", "command": ["unused"]},
                    }
                )
            )

            env = {k: v for k, v in os.environ.items() if not k.startswith("WARMGATE_")}

            def start(entry: list[str], port: int) -> tuple[subprocess.Popen[bytes], float, float]:
                """Spawn, time the first 200, settle, read the idle RSS."""
                spawn = time.perf_counter()
                arguments = ["probe", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)]
                process = subprocess.Popen(
                    [*entry, *arguments], env=env, stderr=subprocess.DEVNULL, cwd=checkout
                )
                started.append(process)
                first_200 = wait_for_200(port, "/startupz", deadline)
                for _ in range(20):  # settle: the first requests allocate
                    get(port, "/readyz")
                return process, (first_200 - spawn) * 1000, rss_bytes(process.pid) / 2**20

            # `warmgate probe` validates, then execs its serving process under the same PID
            # (probe/launch.py): the RSS read is the serving process's.
            probe, startup_ms, idle_rss = start(warmgate_command(checkout), probe_port)
            results: dict[str, Any] = {
                "startup_to_first_200_ms": round(startup_ms, 1),
                "idle_rss_mib": round(idle_rss, 1),
            }

            results["readyz_unloaded"] = paced_latencies(probe_port, "/readyz", rate, duration)
            results["metrics_unloaded"] = paced_latencies(probe_port, "/metrics", 20, 2.5)

            hogs = [subprocess.Popen([sys.executable, "-c", CPU_HOG]) for _ in range(nproc())]
            started.extend(hogs)
            try:
                results["readyz_saturated"] = paced_latencies(probe_port, "/readyz", rate, duration)
                results["saturating_processes"] = len(hogs)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            results["rss_after_load_mib"] = round(rss_bytes(probe.pid) / 2**20, 1)

            probe.send_signal(signal.SIGTERM)
            probe.wait(timeout=30)
            results["exit_code_after_term"] = probe.returncode
            return results
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="probe requests per second (default 300)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per latency run (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--checkout",
        type=Path,
        default=None,
        help="run `warmgate probe` from this source checkout instead (another commit, in a git worktree), "
        "with this venv",
    )
    args = parser.parse_args()
    results = {
        "machine": machine(),
        "rate": args.rate,
        "duration_s": args.duration,
        **({"checkout": str(args.checkout)} if args.checkout else {}),
        **run(args.rate, args.duration, args.checkout),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
