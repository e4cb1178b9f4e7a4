"""Gate effect: the first request of each shape after "ready", with and without warmgate (not a
timed test).

For each target server and each fresh start:
  (a) without warmgate: the server is started alone; the moment its own readiness endpoint
      (`/v2/health/ready`) answers 200, one request per shape is sent (smallest first), then
      `--steady` more per shape give that shape's steady p50 in the same process;
  (b) with warmgate: `warmgate run -c <generated warmup.yaml>` starts the same server command,
      warms every shape, load-tests, gates; the moment the ready marker (ready.json) appears, the
      same requests are sent the same way.
The headline is first / steady p50 per shape, median and spread over the starts, (a) beside (b).

Targets: `warmgate serve --demo` with ONNX Runtime (`onnx`), TorchScript (`torch`), torch.compile
of a torch.export program (`torch-compile`, a fresh inductor cache per start: a new pod has none),
and MLServer 1.7 from PyPI serving the same model as TorchScript (`mlserver`) or in ONNX Runtime
(`mlserver-onnx`) through bench/mlserver_runtime.py; MLServer runs from `.tools/mlserver-venv`
(torch only needed for `mlserver`; see docs/benchmarks.md). Conditions alternate a, b, a, b so that load from
other work on the machine falls on both. Loopback only; every wait has a deadline.

    python bench/gate_effect.py [--targets onnx,torch,torch-compile,mlserver] [--starts 3]
                                [--steady 20] [--protocol oip|oip-grpc] [--json out.json] [--smoke]

With `--protocol oip-grpc` the same starts are measured over the Open Inference Protocol's gRPC
service (the reference server with --grpc-port; MLServer's own gRPC port): (a) waits for gRPC
ServerReady and ModelReady, (b) gates with `protocol: oip-grpc`, and every request is the
serialised ModelInferRequest warmgate's load test sends.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    MLSERVER_VENV,
    REPO,
    Client,
    GrpcClient,
    add_output_flags,
    bench_parser,
    demo_request,
    demo_server_argv,
    fmt,
    free_port,
    median_spread,
    oip_ready,
    prepare_demo,
    print_machine,
    spawn,
    spawn_warmgate,
    spread,
    stop,
    tail,
    wait_for,
    warmgate_config,
    write_json,
)

# One intra-op thread per server: a one-CPU pod, and far less sensitive to other work on this
# two-core machine than two threads fighting over two busy cores.
THREADS = 1
# `warmgate run` exit code when the gate failed (entrypoint/exitcodes.py GATE_FAILED).
GATE_FAILED = 80
ALL_TARGETS = ("onnx", "torch", "torch-compile", "mlserver", "mlserver-onnx")


@dataclass
class Settings:
    batch_sizes: list[int]
    steady: int
    starts: int
    warmup_count: int
    load_duration_s: float
    ready_timeout_s: float
    protocol: str = "oip"


def mlserver_available() -> bool:
    return (MLSERVER_VENV / "bin" / "mlserver").exists()


def server_command(
    target: str, port: int, grpc_port: int | None, workdir: Path, cache: Path
) -> tuple[list[str], dict[str, str]]:
    """The server's argv and environment for one fresh start (gRPC served on grpc_port if given)."""
    if target.startswith("mlserver"):
        return mlserver_command(target, port, workdir, cache, grpc_port), {}
    env = {}
    if target == "torch-compile":
        # A new pod has no inductor cache; sharing one across starts would hide the compile.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(workdir / "inductor")
    return demo_server_argv(target, port, cache, threads=THREADS, grpc_port=grpc_port), env


def mlserver_command(
    target: str, port: int, workdir: Path, cache: Path, grpc_port: int | None = None
) -> list[str]:
    root = workdir / "mlserver"
    model_dir = root / "demo"
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "bench" / "mlserver_runtime.py", model_dir / "mlserver_runtime.py")
    torch_model = target == "mlserver"
    model_path = prepare_demo("torch" if torch_model else "onnx", cache)
    implementation = "TorchScriptModel" if torch_model else "OnnxRuntimeModel"
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": HOST,
                "http_port": port,
                "grpc_port": grpc_port or free_port(),
                "metrics_port": free_port(),
                "debug": False,
                # MLServer 1.7.1's parallel inference workers die at start with the uvloop that
                # pip resolves today ("There is no current event loop"); inference in the main
                # process avoids the pool (and is MLServer's lighter single-process setup anyway).
                "parallel_workers": 0,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "demo",
                "implementation": f"mlserver_runtime.{implementation}",
                "parameters": {"uri": str(model_path)},
            }
        )
    )
    return [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(root)]


def one_start(target: str, condition: str, workdir: Path, cache: Path, settings: Settings) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    port = free_port()
    grpc = settings.protocol == "oip-grpc"
    grpc_port = free_port() if grpc else None
    url = f"grpc://{HOST}:{grpc_port}" if grpc else f"http://{HOST}:{port}"
    argv, env = server_command(target, port, grpc_port, workdir, cache)
    log = workdir / "log.txt"
    record: dict[str, Any] = {"target": target, "condition": condition, "shapes": {}}
    client: Client | GrpcClient = GrpcClient(url) if grpc else Client(url)
    if condition == "a":
        started = time.monotonic()
        proc = spawn(argv, log, env)

        def ready() -> bool:
            # Server and model, as warmgate's own health wait and a KServe readiness probe ask:
            # MLServer answers /v2/health/ready with 200 before its models are registered.
            if isinstance(client, GrpcClient):
                return client.ready()
            return oip_ready(url)

        signal_name = (
            "server gRPC ServerReady and ModelReady(demo) = true"
            if grpc
            else "server /v2/health/ready and /v2/models/demo/ready = 200"
        )
    else:
        state = workdir / "state"
        config = warmgate_config(
            workdir / "warmup.yaml",
            command=argv,
            url=url,
            batch_sizes=settings.batch_sizes,
            state_dir=state,
            count=settings.warmup_count,
            load_duration_s=settings.load_duration_s,
            protocol=settings.protocol,
        )
        started = time.monotonic()
        proc = spawn_warmgate(["run", "-c", str(config)], log, {**env, "WARMGATE_STATE_DIR": str(state)})

        def ready() -> bool:
            return (state / "ready.json").exists()

        signal_name = "warmgate ready.json exists"
    record["ready_signal"] = signal_name
    try:
        ready_at = wait_for(ready, settings.ready_timeout_s, f"{target}/{condition}", alive=proc)
        record["time_to_ready_s"] = ready_at - started
        requests = {bs: demo_request(url, bs, protocol=settings.protocol) for bs in settings.batch_sizes}
        firsts = {bs: client.post(requests[bs]) for bs in settings.batch_sizes}
        for bs in settings.batch_sizes:
            steady = [client.post(requests[bs]) for _ in range(settings.steady)]
            ok = [lat for lat, status in steady if status == 200]
            first_s, first_status = firsts[bs]
            p50 = float(np.median(ok)) if ok else None
            record["shapes"][f"bs{bs}"] = {
                "first_ms": first_s * 1000,
                "first_status": first_status,
                "steady_p50_ms": p50 * 1000 if p50 else None,
                "steady_errors": settings.steady - len(ok),
                "ratio": first_s / p50 if p50 and first_status == 200 else None,
            }
        if condition == "b":
            report = json.loads((workdir / "state" / "ready.json").read_text())
            record["warmgate_phases_s"] = report.get("phases", {})
            record["warmgate_attempts"] = report.get("attempts", 1)
    except (RuntimeError, TimeoutError, OSError) as exc:
        if condition == "b" and proc.poll() == GATE_FAILED:
            # Not a benchmark failure: the gate refused to mark this start ready (every attempt).
            record["gate_failed"] = tail(log, 8)
        else:
            record["error"] = f"{exc}; log tail: {tail(log)}"
    finally:
        stop(proc)
        client.close()
    return record


def summarise(
    records: list[dict[str, Any]], targets: list[str], batch_sizes: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        for bs in batch_sizes:
            row: dict[str, Any] = {"target": target, "shape": f"bs{bs}"}
            for condition in ("a", "b"):
                cells = [
                    r["shapes"].get(f"bs{bs}", {})
                    for r in records
                    if r["target"] == target
                    and r["condition"] == condition
                    and "error" not in r
                    and "gate_failed" not in r
                ]
                row[condition] = {
                    "ratio": median_spread([c.get("ratio") for c in cells]),
                    "first_ms": median_spread([c.get("first_ms") for c in cells]),
                    "steady_p50_ms": median_spread([c.get("steady_p50_ms") for c in cells]),
                    "failed_first": sum(1 for c in cells if c.get("first_status") != 200),
                    "gate_failed_starts": sum(
                        1
                        for r in records
                        if r["target"] == target and r["condition"] == condition and "gate_failed" in r
                    ),
                }
            rows.append(row)
        for condition in ("a", "b"):
            ready = [
                r.get("time_to_ready_s")
                for r in records
                if r["target"] == target
                and r["condition"] == condition
                and "error" not in r
                and "gate_failed" not in r
            ]
            rows[-1].setdefault("time_to_ready_s", {})[condition] = median_spread(ready)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| target | shape | (a) first/steady, server ready | (b) first/steady, warmgate ready | "
        "(a) first ms | (b) first ms | steady p50 ms (a / b) | (b) starts the gate refused |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b = row["a"], row["b"]
        out.append(
            f"| {row['target']} | {row['shape']} | {spread(a['ratio'], 1, 'x')} | "
            f"{spread(b['ratio'], 1, 'x')} | "
            f"{spread(a['first_ms'])} | {spread(b['first_ms'])} | "
            f"{fmt(a['steady_p50_ms']['median'])} / {fmt(b['steady_p50_ms']['median'])} | "
            f"{b['gate_failed_starts']} |"
        )
    out += ["", "| target | time to ready (a) server alone, s | (b) warmgate marker, s |", "|---|---:|---:|"]
    for row in rows:
        if "time_to_ready_s" in row:
            t = row["time_to_ready_s"]
            out.append(f"| {row['target']} | {spread(t['a'], 2)} | {spread(t['b'], 2)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--targets", default="onnx,torch,torch-compile,mlserver")
    parser.add_argument("--starts", type=int, default=3, help="fresh starts per target and condition")
    parser.add_argument("--steady", type=int, default=20, help="requests per shape for the steady p50")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--protocol", choices=("oip", "oip-grpc"), default="oip")
    add_output_flags(parser, json_help="write every record and the summary here")
    parser.add_argument(
        "--skip-missing", action="store_true", help="skip targets whose server is not installed (mlserver)"
    )
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    needs_mlserver = [t for t in targets if t.startswith("mlserver")]
    if needs_mlserver and not mlserver_available():
        if not args.skip_missing:
            parser.error(f"mlserver targets need {MLSERVER_VENV}/bin/mlserver (see docs/benchmarks.md)")
        targets = [t for t in targets if t not in needs_mlserver]
    settings = Settings(
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
        steady=args.steady,
        starts=args.starts,
        warmup_count=8,
        load_duration_s=3.0,
        ready_timeout_s=300.0,
        protocol=args.protocol,
    )
    if args.smoke:
        settings = Settings(
            batch_sizes=settings.batch_sizes[:2], steady=3, starts=1, warmup_count=2,
            load_duration_s=0.5, ready_timeout_s=120.0, protocol=args.protocol,
        )  # fmt: skip

    info = print_machine()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="warmgate-gate-effect-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        for target in targets:
            prepare_demo({"mlserver": "torch", "mlserver-onnx": "onnx"}.get(target, target), cache)
            for start in range(settings.starts):
                for condition in ("a", "b"):
                    record = one_start(
                        target, condition, work / f"{target}-{start}-{condition}", cache, settings
                    )
                    record["start"] = start
                    records.append(record)
                    shapes = ", ".join(
                        f"{name} {fmt(s['first_ms'])}/{fmt(s['steady_p50_ms'])} ms"
                        for name, s in record["shapes"].items()
                    )
                    print(
                        f"{target} start {start} ({condition}): "
                        f"ready {fmt(record.get('time_to_ready_s'), 2)} s; "
                        f"first/steady {shapes} {record.get('error', '')}"
                        f"{' GATE FAILED (no marker)' if 'gate_failed' in record else ''}",
                        flush=True,
                    )
    rows = summarise(records, targets, settings.batch_sizes)
    print()
    print(markdown(rows))
    write_json(
        args.json, {"machine": info, "settings": settings.__dict__, "records": records, "summary": rows}
    )
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
