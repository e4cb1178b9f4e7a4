"""LLM gate effect and the load generator's cost per streamed token (not a timed test). Over 400
lines: two measurements that share the servers, the prompts and the reporting.

Part `gate`: first-request time to first token (TTFT) per prompt length, with and without the gate,
against a real OpenAI-compatible server: `transformers serve` (PyPI, on the CPU, from
.tools/llm-venv) running the tiny LLaMA that tests/support/tinyllm.py builds locally. For each
fresh start:
  (a) without warmgate: the server is started alone; the moment /health answers 200 and
      /v1/models lists the model (the readiness a plain probe would use), one streamed chat
      request per prompt length is sent (shortest first) and its TTFT taken; then `--steady` more
      per length give that length's steady TTFT p50, in the same process;
  (b) with warmgate: `warmgate run` with a generated config (protocol openai, family transformers,
      one prompt shape per length) starts the same server command, warms, load-tests and gates;
      the moment the ready marker (ready.json) appears, the same requests are sent the same way.
Conditions alternate a, b, a, b so that other load on the machine falls on both. Every prompt is
unique from its first word (random words of the model's training vocabulary, one token each), so
no cache can turn a request into a repeat; the achieved length is the server's own count
(usage.prompt_tokens), reported beside the target.

Part `overhead`: the load generator's CPU per streamed token. The fake server
(tests/support/fakellm.py) streams one token per event with no TTFT and no ITL, as fast as it
can. `warmgate run --once` starts it and drives its load test twice, for two durations; warmgate's
CPU is its rusage from wait4 less the CPU the fake server reports for itself on exit (it is
warmgate's only child). The difference in warmgate's CPU over the difference in tokens streamed
(the fake's own count) is the marginal generator CPU per 1000 tokens, free of start-up, warmup
and calibration. A bare aiohttp SSE reader in this process, at the same concurrency against a
fake server of its own, is the floor to compare with.

    python bench/llm_gate_effect.py [--parts gate,overhead] [--starts 3] [--lengths 64,256,1024,2048]
                                    [--steady 10] [--max-tokens 16] [--threads 1]
                                    [--concurrency 4] [--durations 3,9] [--json out.json] [--smoke]

Needs .tools/llm-venv (bash .ci/install-tools.sh --no-apt) for part `gate`. Loopback only; every
wait has a deadline; every process started is stopped by process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    HOST,
    REPO,
    add_output_flags,
    bench_parser,
    fmt,
    free_port,
    median_spread,
    print_machine,
    spawn,
    spawn_until_line,
    spawn_warmgate,
    spread,
    stop,
    tail,
    wait_for,
    write_json,
)

from tests.support import tinyllm
from warmgate.exitcodes import GATE_FAILED

FAKE_LLM = REPO / "tests" / "support" / "fakellm.py"
# The chat template (role, markers, generation prompt) adds this many tokens to a prompt's words.
PROMPT_OVERHEAD_TOKENS = 16
REQUEST_TIMEOUT_S = 120.0


@dataclass
class Settings:
    lengths: list[int]
    steady: int
    starts: int
    max_tokens: int
    threads: int
    warmup_count: int
    load_duration_s: float
    ready_timeout_s: float
    concurrency: int
    durations_s: list[float]
    overhead_max_tokens: int


# ---- prompts and one streamed request ------------------------------------------------------


def prompt_text(tokens: int, rng: random.Random) -> str:
    """A unique prompt of about `tokens` tokens for the tiny model: random words of its training
    vocabulary (one token each) from the very first one, so no two prompts share a prefix."""
    words = [rng.choice(tinyllm.CORPUS_WORDS) for _ in range(max(1, tokens - PROMPT_OVERHEAD_TOKENS))]
    return " ".join(words)


async def streamed_chat(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> dict[str, Any]:
    """One streamed chat completion: TTFT (first content event), tokens, the server's prompt count."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.perf_counter()
    record: dict[str, Any] = {"status": 0, "ttft_s": None, "tokens": 0, "prompt_tokens": None}
    try:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with session.post(url + "/v1/chat/completions", json=body, timeout=timeout) as response:
            record["status"] = response.status
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    record["prompt_tokens"] = chunk["usage"].get("prompt_tokens")
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") or choice.get("text"):
                        record["tokens"] += 1
                        if record["ttft_s"] is None:
                            record["ttft_s"] = time.perf_counter() - started
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["total_s"] = time.perf_counter() - started
    return record


async def measure_lengths(url: str, model: str, settings: Settings, rng: random.Random) -> dict[str, Any]:
    """First request per length (shortest first), then the steady requests per length."""
    shapes: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        firsts = {}
        for length in settings.lengths:
            prompt = prompt_text(length, rng)
            firsts[length] = await streamed_chat(session, url, model, prompt, settings.max_tokens)
        for length in settings.lengths:
            steady = [
                await streamed_chat(session, url, model, prompt_text(length, rng), settings.max_tokens)
                for _ in range(settings.steady)
            ]
            ok = [r["ttft_s"] for r in steady if r["status"] == 200 and r["ttft_s"] is not None]
            first = firsts[length]
            p50 = float(np.median(ok)) if ok else None
            first_ttft = first["ttft_s"] if first["status"] == 200 else None
            shapes[f"chat-{length}"] = {
                "target_tokens": length,
                "prompt_tokens": first["prompt_tokens"],
                "first_ttft_ms": first_ttft * 1000 if first_ttft is not None else None,
                "first_status": first["status"],
                "steady_ttft_p50_ms": p50 * 1000 if p50 is not None else None,
                "steady_errors": settings.steady - len(ok),
                "ratio": first_ttft / p50 if first_ttft is not None and p50 else None,
            }
    return shapes


# ---- part gate: fresh starts of the real server, with and without warmgate -------------------


def gate_config(path: Path, argv: list[str], url: str, model: str, state: Path, settings: Settings) -> Path:
    document = {
        "server": {
            "command": argv,
            "url": url,
            "protocol": "openai",
            "model": model,
            "openai": {"family": "transformers"},
            "start_timeout_s": settings.ready_timeout_s,
            "request_timeout_s": REQUEST_TIMEOUT_S,
        },
        "shapes": [
            {
                "name": f"chat-{length}",
                "prompt": {"tokens": length, "max_tokens": settings.max_tokens, "stream": True, "chat": True},
                "count": settings.warmup_count,
                "weight": 1,
            }
            for length in settings.lengths
        ],
        "load_test": {"mode": "closed", "concurrency": 2, "duration_s": settings.load_duration_s},
        # Generous SLOs: this measures what the gate's warmup does, not a service's promise.
        "gate": {
            "ttft_p95_ms": 10_000,
            "itl_p95_ms": 5_000,
            "max_error_rate": 0.0,
            "max_first_to_steady_ratio": 4.0,
        },
        "state_dir": str(state),
        "drain": {"quiet_period_s": 0, "grace_period_s": 10},
        # A noisy shared machine can fail one attempt's ratio check; a real deployment would retry.
        "policy": {"on_failure": "retry", "retries": 2},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def models_listed(url: str, model: str) -> bool:
    status, body = tinyllm.http_get(url + "/v1/models", timeout=0.5)
    if status != 200:
        return False
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return model in [entry.get("id") for entry in json.loads(body).get("data", [])]
    return False


def one_start(
    condition: str, workdir: Path, model_dir: Path, settings: Settings, seed: int
) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    port = free_port()
    url = f"http://{HOST}:{port}"
    model = str(model_dir)
    argv = tinyllm.serve_argv(model_dir, port)
    env = tinyllm.serve_env(model_dir, settings.threads)
    log = workdir / "log.txt"
    record: dict[str, Any] = {"condition": condition, "shapes": {}}
    state = workdir / "state"
    if condition == "a":
        started = time.monotonic()
        proc = spawn(argv, log, env)

        def ready() -> bool:
            return tinyllm.http_get(url + "/health", timeout=0.5)[0] == 200 and models_listed(url, model)

        record["ready_signal"] = "server /health = 200 and /v1/models lists the model"
    else:
        config = gate_config(workdir / "warmup.yaml", argv, url, model, state, settings)
        started = time.monotonic()
        proc = spawn_warmgate(["run", "-c", str(config)], log, {**env, "WARMGATE_STATE_DIR": str(state)})

        def ready() -> bool:
            return (state / "ready.json").exists()

        record["ready_signal"] = "warmgate ready.json exists"
    try:
        ready_at = wait_for(ready, settings.ready_timeout_s, f"llm/{condition}", alive=proc)
        record["time_to_ready_s"] = ready_at - started
        record["shapes"] = asyncio.run(measure_lengths(url, model, settings, random.Random(seed)))
        if condition == "b":
            report = json.loads((state / "ready.json").read_text())
            record["warmgate_phases_s"] = report.get("phases", {})
            record["warmgate_attempts"] = report.get("attempts", 1)
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        if condition == "b" and proc.poll() == GATE_FAILED:
            record["gate_failed"] = tail(log, 8)
        else:
            record["error"] = f"{exc}; log tail: {tail(log)}"
    finally:
        stop(proc)
    return record


def summarise_gate(records: list[dict[str, Any]], lengths: list[int]) -> list[dict[str, Any]]:
    rows = []
    for length in lengths:
        name = f"chat-{length}"
        row: dict[str, Any] = {"shape": name, "target_tokens": length}
        for condition in ("a", "b"):
            good = [
                r
                for r in records
                if r["condition"] == condition and "error" not in r and "gate_failed" not in r
            ]
            cells = [r["shapes"].get(name, {}) for r in good]
            row[condition] = {
                "first_ttft_ms": median_spread([c.get("first_ttft_ms") for c in cells]),
                "steady_ttft_p50_ms": median_spread([c.get("steady_ttft_p50_ms") for c in cells]),
                "ratio": median_spread([c.get("ratio") for c in cells]),
                "prompt_tokens": median_spread([c.get("prompt_tokens") for c in cells]),
                "time_to_ready_s": median_spread([r.get("time_to_ready_s") for r in good]),
                "gate_failed_starts": sum(
                    1 for r in records if r["condition"] == condition and "gate_failed" in r
                ),
            }
        rows.append(row)
    return rows


def gate_markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| shape | prompt tokens (server count) | (a) first TTFT / steady, server ready | "
        "(b) first TTFT / steady, warmgate ready | (a) first TTFT ms | (b) first TTFT ms | "
        "steady TTFT p50 ms (a / b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        a, b = row["a"], row["b"]
        tokens = a["prompt_tokens"]["median"] or b["prompt_tokens"]["median"]
        out.append(
            f"| {row['shape']} | {fmt(tokens, 0)} | "
            f"{spread(a['ratio'], 1, 'x')} | {spread(b['ratio'], 1, 'x')} | "
            f"{spread(a['first_ttft_ms'])} | {spread(b['first_ttft_ms'])} | "
            f"{fmt(a['steady_ttft_p50_ms']['median'])} / {fmt(b['steady_ttft_p50_ms']['median'])} |"
        )
    if rows:
        t = rows[0]
        out.append("")
        out.append(
            f"time to ready: (a) server alone {spread(t['a']['time_to_ready_s'], 2)} s, "
            f"(b) warmgate marker {spread(t['b']['time_to_ready_s'], 2)} s; "
            f"starts the gate refused: {t['b']['gate_failed_starts']}"
        )
    return "\n".join(out)


def run_gate(settings: Settings, work: Path) -> dict[str, Any]:
    reason = tinyllm.llm_venv_missing()
    if reason is not None:
        raise SystemExit(reason)
    model_dir = tinyllm.build_model(work / "tinyllm")
    records = []
    for start in range(settings.starts):
        for condition in ("a", "b"):
            record = one_start(
                condition, work / f"start-{start}-{condition}", model_dir, settings, seed=start
            )
            record["start"] = start
            records.append(record)
            shapes = ", ".join(
                f"{name} {fmt(s['first_ttft_ms'])}/{fmt(s['steady_ttft_p50_ms'])} ms"
                for name, s in record["shapes"].items()
            )
            print(
                f"start {start} ({condition}): ready {fmt(record.get('time_to_ready_s'), 2)} s; "
                f"first/steady TTFT {shapes} {record.get('error', '')}"
                f"{' GATE FAILED (no marker)' if 'gate_failed' in record else ''}",
                flush=True,
            )
    rows = summarise_gate(records, settings.lengths)
    print()
    print(gate_markdown(rows))
    return {"records": records, "summary": rows}


# ---- part overhead: generator CPU per streamed token -------------------------------------------


def start_fake_llm(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The fake server at full speed: no TTFT, no ITL, one token per event and per write."""
    argv = [sys.executable, str(FAKE_LLM), "--port", "0", "--model", "tiny"]
    proc, ready = spawn_until_line(argv, log, r"^ready (\d+)$", 30, "fake LLM server")
    return proc, f"http://{HOST}:{int(ready.group(1))}"


def overhead_config(
    path: Path, port: int, exit_report: Path, state: Path, settings: Settings, duration_s: float
) -> Path:
    command = [sys.executable, str(FAKE_LLM), "--port", str(port), "--model", "tiny"]
    document = {
        "server": {
            "command": [*command, "--exit-report", str(exit_report)],
            "url": f"http://{HOST}:{port}",
            "protocol": "openai",
            "model": "tiny",
            "openai": {"family": "vllm"},
            "start_timeout_s": 30,
            "request_timeout_s": 60,
        },
        "shapes": [
            {
                "name": "stream-32",
                "prompt": {
                    "tokens": 32,
                    "max_tokens": settings.overhead_max_tokens,
                    "stream": True,
                    "chat": True,
                },
                "count": 2,
            }
        ],
        "load_test": {"mode": "closed", "concurrency": settings.concurrency, "duration_s": duration_s},
        # Judging is not the point here: only the load test's cost is.
        "gate": {"ttft_p95_ms": 60_000, "itl_p95_ms": 60_000, "max_first_to_steady_ratio": None},
        "state_dir": str(state),
        "drain": {"quiet_period_s": 0, "grace_period_s": 5},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def warmgate_cpu_run(config: Path, log: Path, timeout_s: float) -> tuple[int, float, float]:
    """`warmgate run --once`: (exit code, CPU seconds of warmgate and the server it reaped, wall s)."""
    started = time.monotonic()
    proc = spawn_warmgate(["run", "--once", "-c", str(config)], log)
    # Not common.stop or Popen.wait: wait4 gives the rusage of warmgate and the children it
    # reaped, which Popen.wait does not.
    watchdog = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # nothing should be left; make sure
    return proc.returncode, usage.ru_utime + usage.ru_stime, time.monotonic() - started


async def bare_reader(url: str, settings: Settings, duration_s: float) -> dict[str, float]:
    """The floor: a minimal aiohttp SSE reader, closed loop at the same concurrency."""
    rng = random.Random(7)
    tokens = 0
    requests = 0
    deadline = time.monotonic() + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens, requests
        while time.monotonic() < deadline:
            words = " ".join(rng.choice(tinyllm.CORPUS_WORDS) for _ in range(32))
            record = await streamed_chat(session, url, "tiny", words, settings.overhead_max_tokens)
            tokens += record["tokens"]
            requests += 1

    async with aiohttp.ClientSession() as session:
        cpu = time.process_time()
        wall = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(settings.concurrency)))
        cpu = time.process_time() - cpu
        wall = time.monotonic() - wall
    return {"tokens": tokens, "requests": requests, "cpu_s": cpu, "wall_s": wall,
            "cpu_s_per_1k_tokens": 1000 * cpu / max(1, tokens), "tokens_per_s": tokens / wall}  # fmt: skip


def one_overhead_run(settings: Settings, work: Path, duration: float) -> dict[str, Any]:
    """warmgate's own CPU and the tokens streamed, for one load-test duration: the fake server is
    warmgate's child and reports its own CPU on exit, which is taken off warmgate's rusage."""
    log = work / "overhead.log"
    exit_report = work / f"fake-exit-{duration:g}.json"
    state = work / f"state-{duration:g}"
    config = overhead_config(
        work / f"overhead-{duration:g}.yaml", free_port(), exit_report, state, settings, duration
    )
    code, cpu, wall = warmgate_cpu_run(config, log, timeout_s=duration + 120)
    run: dict[str, Any] = {"duration_s": duration, "exit_code": code, "wall_s": wall}
    try:
        fake = json.loads(exit_report.read_text())
    except (OSError, ValueError) as exc:
        run["error"] = f"no exit report from the fake server ({exc}); log tail: {tail(log)}"
        return run
    run.update(cpu_s=cpu - fake["cpu_s"], server_cpu_s=fake["cpu_s"], tokens=fake["stats"]["tokens_sent"])
    print(
        f"warmgate load test {duration:g} s: exit {code}, {run['tokens']} tokens, "
        f"warmgate CPU {run['cpu_s']:.2f} s (server {fake['cpu_s']:.2f} s)",
        flush=True,
    )
    return run


def run_overhead(settings: Settings, work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"concurrency": settings.concurrency, "max_tokens": settings.overhead_max_tokens}
    runs = [one_overhead_run(settings, work, duration) for duration in settings.durations_s]
    result["runs"] = runs
    short, long = runs
    completed = all(r["exit_code"] in (0, GATE_FAILED) and "error" not in r for r in runs)
    if completed and long["tokens"] > short["tokens"]:
        marginal = (long["cpu_s"] - short["cpu_s"]) / (long["tokens"] - short["tokens"])
        result["warmgate_cpu_s_per_1k_tokens"] = 1000 * marginal
    else:
        result["error"] = (
            f"the warmgate runs did not both complete: {runs}; log tail: {tail(work / 'overhead.log')}"
        )
    fake, url = start_fake_llm(work / "bare.log")
    try:
        result["bare"] = asyncio.run(bare_reader(url, settings, settings.durations_s[-1]))
    finally:
        stop(fake)
    print()
    print("| client | concurrency | CPU s per 1000 streamed tokens |")
    print("|---|---:|---:|")
    short_s, long_s = settings.durations_s
    print(
        f"| warmgate load generator (marginal, {short_s:g} s vs {long_s:g} s) "
        f"| {settings.concurrency} | {fmt(result.get('warmgate_cpu_s_per_1k_tokens'), 3)} |"
    )
    bare = result["bare"]["cpu_s_per_1k_tokens"]
    print(f"| bare aiohttp SSE reader | {settings.concurrency} | {fmt(bare, 3)} |")
    return result


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--parts", default="gate,overhead")
    parser.add_argument("--starts", type=int, default=3, help="fresh starts per condition")
    parser.add_argument("--lengths", default="64,256,1024,2048", help="prompt lengths in tokens")
    parser.add_argument("--steady", type=int, default=10, help="requests per length for the steady p50")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--concurrency", type=int, default=4, help="streams in flight (overhead)")
    parser.add_argument("--durations", default="3,9", help="two load-test durations, s (overhead)")
    add_output_flags(parser, json_help="write every record and the summary here")
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - {"gate", "overhead"}:
        parser.error(f"unknown parts: {args.parts}")
    settings = Settings(
        lengths=[int(n) for n in args.lengths.split(",")],
        steady=args.steady,
        starts=args.starts,
        max_tokens=args.max_tokens,
        threads=args.threads,
        warmup_count=4,
        load_duration_s=3.0,
        ready_timeout_s=300.0,
        concurrency=args.concurrency,
        durations_s=[float(d) for d in args.durations.split(",")],
        overhead_max_tokens=256,
    )
    if len(settings.durations_s) != 2 or settings.durations_s[0] >= settings.durations_s[1]:
        parser.error("--durations: two durations, the shorter first")
    if args.smoke:
        settings = Settings(
            lengths=settings.lengths[:2], steady=2, starts=1, max_tokens=4, threads=1, warmup_count=2,
            load_duration_s=0.5, ready_timeout_s=180.0, concurrency=2, durations_s=[0.5, 1.5],
            overhead_max_tokens=64,
        )  # fmt: skip

    info = print_machine()
    document: dict[str, Any] = {"machine": info, "settings": settings.__dict__}
    with tempfile.TemporaryDirectory(prefix="warmgate-llm-gate-effect-") as tmp:
        work = Path(tmp)
        if "gate" in parts:
            document["gate"] = run_gate(settings, work)
        if "overhead" in parts:
            document["overhead"] = run_overhead(settings, work)
    write_json(args.json, document)
    failed = any("error" in r for r in document.get("gate", {}).get("records", []))
    return 1 if failed or "error" in document.get("overhead", {}) else 0


if __name__ == "__main__":
    raise SystemExit(main())
