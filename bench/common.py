"""Helpers shared by the evidence benchmarks (gate_effect, scale_out, time_to_ready, cache_bench, ...).

Everything here talks to 127.0.0.1 only, bounds every wait by a deadline, and stops the processes
it started by process group (each server is started in its own session).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from warmgate.config import ServerConfig, Shape  # noqa: E402
from warmgate.entrypoint.engine.payloads import build_inputs  # noqa: E402
from warmgate.protocols import PreparedRequest, make_adapter  # noqa: E402

HOST = "127.0.0.1"
# The demo's input is FP32 [batch, 3, 64, 64].
DEMO_DIMS = [3, 64, 64]
# MLServer from PyPI lives in its own venv (its pins clash with ours).
MLSERVER_VENV = REPO / ".tools" / "mlserver-venv"
# Readiness is polled this often by the benchmarks themselves: fine enough to time a first request
# "as soon as" something says ready, cheap enough not to load two cores.
POLL_S = 0.005


# ---- machine -------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def print_machine() -> dict[str, Any]:
    """machine(), printed first so a run's log says where its figures come from."""
    info = machine()
    print(f"machine: {info}", flush=True)
    return info


# ---- command line --------------------------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring, line breaks kept, is the --help text."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_warmup_flags(parser: argparse.ArgumentParser, load_duration_s: float = 3.0) -> None:
    """--count and --load-duration: the warmup and load test of each generated warmup.yaml."""
    parser.add_argument("--count", type=int, default=8, help="warmup requests per shape (default 8)")
    parser.add_argument(
        "--load-duration",
        type=float,
        default=load_duration_s,
        help=f"load test seconds (default {load_duration_s:g})",
    )


def add_output_flags(
    parser: argparse.ArgumentParser,
    json_help: str | None = None,
    smoke_help: str = "tiny run: keeps the script from rotting",
) -> None:
    """--json (every record and the summary) and --smoke (the tiny run the tests make)."""
    parser.add_argument("--json", type=Path, help=json_help)
    parser.add_argument("--smoke", action="store_true", help=smoke_help)


# ---- ports, processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def warmgate_argv() -> list[str]:
    """The installed `warmgate` script beside this Python, else `python -m entrypoint`."""
    script = Path(sys.executable).parent / "warmgate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "warmgate"]


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start in a new session (own process group) with output to a log file."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def spawn_warmgate(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """`warmgate <args>` by spawn, behind `wrapper` if given (e.g. taskset)."""
    return spawn([*wrapper, *warmgate_argv(), *args], log, env)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> int | None:
    """TERM the process group, wait up to grace_s, then KILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    # Whatever is left in the group (workers of a server that ignored TERM) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    return proc.returncode


def wait_for(
    check: Callable[[], bool], timeout_s: float, what: str, alive: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll `check` every POLL_S until it is true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {alive.returncode} first")
        time.sleep(POLL_S)
    raise TimeoutError(f"{what}: not within {timeout_s:g}s")


def spawn_until_line(
    argv: Sequence[str], log: Path, pattern: str, timeout_s: float, what: str
) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """spawn(), then wait for a line of its log to match `pattern`: a server that binds port 0 says
    there which port it got. If it exits or the deadline passes first, it is stopped and
    RuntimeError says so with the log's tail."""
    # Only what this process writes: a reused log may hold an earlier process's line.
    offset = log.stat().st_size if log.exists() else 0
    proc = spawn(argv, log)
    found: list[re.Match[str]] = []

    def announced() -> bool:
        with log.open("rb") as file:
            file.seek(offset)
            match = re.search(pattern, file.read().decode(errors="replace"), re.MULTILINE)
        if match is not None:
            found.append(match)
        return match is not None

    try:
        wait_for(announced, timeout_s, what, alive=proc)
    except (RuntimeError, TimeoutError) as exc:
        stop(proc)
        raise RuntimeError(f"{exc}; log tail: {tail(log)}") from None
    return proc, found[0]


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    parsed = url.split("/", 3)
    host, port = parsed[2].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request("GET", "/" + (parsed[3] if len(parsed) > 3 else ""))
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def oip_ready(url: str, model: str = "demo") -> bool:
    """Server and model ready over the Open Inference Protocol's HTTP endpoints, as warmgate's own
    health wait and a KServe readiness probe ask (MLServer answers /v2/health/ready with 200
    before its models are registered)."""
    return all(
        http_status(url + path, timeout_s=0.5) == 200
        for path in ("/v2/health/ready", f"/v2/models/{model}/ready")
    )


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


# ---- requests ------------------------------------------------------------------------------


def demo_shape(batch_size: int) -> Shape:
    return Shape.model_validate(
        {
            "name": f"bs{batch_size}",
            "batch_size": batch_size,
            "inputs": {"input": {"datatype": "FP32", "dims": DEMO_DIMS, "data": "random"}},
        }
    )


def demo_request(url: str, batch_size: int, model: str = "demo", protocol: str = "oip") -> PreparedRequest:
    """The same Open Inference Protocol request warmgate's engine sends for this shape (for
    oip-grpc: the serialised ModelInferRequest)."""
    adapter = make_adapter(ServerConfig(url=url, model=model, protocol=protocol))
    return adapter.build(build_inputs(demo_shape(batch_size)), batch_size)


class Client:
    """One keep-alive connection; `post` returns (latency in seconds, HTTP status)."""

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        host, port = url.split("/")[2].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)

    def post(self, request: PreparedRequest) -> tuple[float, int]:
        path = "/" + request.url.split("/", 3)[3]
        headers = {"Content-Type": "application/json", **dict(request.headers or {})}
        started = time.perf_counter()
        try:
            self.conn.request("POST", path, body=request.body, headers=headers)
            response = self.conn.getresponse()
            response.read()
            status = response.status
        except OSError:
            self.conn.close()
            status = 0
        return time.perf_counter() - started, status

    def close(self) -> None:
        self.conn.close()


class GrpcClient:
    """One gRPC channel; `post` sends a prepared ModelInferRequest as bytes and returns (latency in
    seconds, 200 on OK else 1000 + the gRPC status code), like `Client`."""

    INFER = "/inference.GRPCInferenceService/ModelInfer"

    def __init__(self, url: str, timeout_s: float = 120.0) -> None:
        import grpc

        self.grpc = grpc
        self.timeout_s = timeout_s
        # The demo's batch-8 answers and requests pass gRPC's 4 MiB default.
        limit = 256 * 1024 * 1024
        self.channel = grpc.insecure_channel(
            url.split("://", 1)[1],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self.infer = self.channel.unary_unary(self.INFER)

    def post(self, request: PreparedRequest) -> tuple[float, int]:
        started = time.perf_counter()
        try:
            self.infer(request.body, timeout=self.timeout_s)
            status = 200
        except self.grpc.RpcError as exc:
            status = 1000 + exc.code().value[0]
        return time.perf_counter() - started, status

    def ready(self, model: str = "demo") -> bool:
        """ServerReady and ModelReady, as warmgate's oip-grpc readiness asks."""
        from warmgate.grpcapi import open_inference_grpc_pb2 as pb

        stub_server = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        stub_model = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        try:
            return bool(
                stub_server(pb.ServerReadyRequest(), timeout=0.5).ready
                and stub_model(pb.ModelReadyRequest(name=model), timeout=0.5).ready
            )
        except self.grpc.RpcError:
            return False

    def close(self) -> None:
        self.channel.close()


# ---- warmgate configuration ----------------------------------------------------------------


def warmgate_config(
    path: Path,
    *,
    command: Sequence[str],
    url: str,
    batch_sizes: Sequence[int],
    state_dir: Path,
    model: str = "demo",
    count: int = 8,
    load_duration_s: float = 3.0,
    load_concurrency: int = 2,
    probe_port: int | None = None,
    start_timeout_s: float = 300.0,
    protocol: str = "oip",
) -> Path:
    """A warmup.yaml like the repository's default, sized for a benchmark."""
    doc: dict[str, Any] = {
        "server": {
            "command": list(command),
            "url": url,
            "protocol": protocol,
            "model": model,
            "start_timeout_s": start_timeout_s,
            "request_timeout_s": 120,
        },
        "shapes": [
            {
                "name": f"bs{bs}",
                "batch_size": bs,
                "inputs": {"input": {"datatype": "FP32", "dims": DEMO_DIMS, "data": "random"}},
                "count": count,
                "weight": max(1, 8 // bs),
            }
            for bs in batch_sizes
        ],
        "load_test": {"mode": "closed", "duration_s": load_duration_s, "concurrency": load_concurrency},
        "gate": {"max_error_rate": 0.0, "max_first_to_steady_ratio": 3.0},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0, "grace_period_s": 10},
        # A noisy shared machine can fail one attempt's ratio check; a real deployment would retry.
        "policy": {"on_failure": "retry", "retries": 2},
    }
    if probe_port is not None:
        doc["probe"] = {"host": HOST, "port": probe_port}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def demo_server_argv(
    runtime: str, port: int, cache_dir: Path, threads: int | None = None, grpc_port: int | None = None
) -> list[str]:
    """`warmgate serve --demo` for runtime onnx | torch | torch-compile (with gRPC on grpc_port)."""
    argv = [sys.executable, "-m", "warmgate", "serve", "--demo", "--host", HOST, "--port", str(port)]
    if grpc_port is not None:
        argv += ["--grpc-port", str(grpc_port)]
    argv += ["--cache-dir", str(cache_dir)]
    if runtime == "torch":
        argv += ["--runtime", "torch"]
    elif runtime == "torch-compile":
        argv += ["--runtime", "torch", "--compile"]
    elif runtime != "onnx":
        raise ValueError(f"unknown runtime {runtime}")
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def bake(config: Path, cache_dir: Path, log: Path, timeout_s: float = 900.0) -> float:
    """`warmgate bake` fills cache_dir once, as a build step or Job would before the first pod of a
    version; returns its seconds."""
    started = time.monotonic()
    proc = spawn_warmgate(["bake", "-c", str(config), "--cache-dir", str(cache_dir)], log)
    try:
        code = proc.wait(timeout_s)
    finally:
        stop(proc)
    if code != 0:
        raise RuntimeError(f"warmgate bake exited {code}: see {log}")
    return time.monotonic() - started


def prepare_demo(runtime: str, cache_dir: Path) -> Path:
    """Generate the demo model files once, in a child (torch stays out of this process), so no
    fresh start in the measurements pays for writing them."""
    fn = {"onnx": "ensure_onnx", "torch": "ensure_torchscript", "torch-compile": "ensure_export"}[runtime]
    code = (
        f"import sys; from pathlib import Path; from warmgate.modelserver.demo import {fn}; "
        f"print({fn}(Path(sys.argv[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache_dir)], capture_output=True, text=True, check=True, cwd=REPO
    )
    return Path(out.stdout.strip().splitlines()[-1])


# ---- statistics and output -----------------------------------------------------------------


def median_spread(values: Sequence[float]) -> dict[str, float | int | None]:
    clean = [v for v in values if v is not None and np.isfinite(v)]
    if not clean:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": float(np.median(clean)),
        "min": float(min(clean)),
        "max": float(max(clean)),
        "n": len(clean),
    }


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def spread(stats: dict[str, Any], digits: int = 1, suffix: str = "") -> str:
    """A median_spread as "median (min-max)"."""
    if stats["median"] is None:
        return "-"
    return f"{fmt(stats['median'], digits, suffix)} ({fmt(stats['min'], digits)}-{fmt(stats['max'], digits)})"


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, on one line, for an error message."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_json(path: Path | None, document: Any) -> None:
    if path is not None:
        path.write_text(json.dumps(document, indent=2))
