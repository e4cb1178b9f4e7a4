"""Cold-start costs of the reference server's runtimes on the demo model (not a timed test).

Each runtime is measured in a fresh process, so the first call really is the first: model load time,
then per batch size the first call and the median of the following calls; then the same after the
server's in-process warmup. Each row is the median of --repeat fresh processes. Prints Markdown.

    python bench/modelserver_bench.py [--batch-sizes 1,8] [--calls 20] [--runtimes onnx,torch]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(kind: str, batch_sizes: list[int], calls: int, cache: Path, warm: bool) -> dict[str, object]:
    import numpy as np

    from warmgate.modelserver import demo
    from warmgate.modelserver.runtime import RuntimeSpec, load
    from warmgate.modelserver.runtime.devices import available_cpus
    from warmgate.modelserver.runtime.onnx_runtime import OnnxOptions
    from warmgate.modelserver.runtime.torch_runtime import TorchOptions
    from warmgate.modelserver.warmup import warm_up

    compile_ = kind == "torch-compile"
    runtime_kind = "onnx" if kind == "onnx" else "torch"
    if kind == "onnx":
        path = demo.ensure_onnx(cache)
    elif compile_:
        path = demo.ensure_export(cache)
    else:
        path = demo.ensure_torchscript(cache)
    spec = RuntimeSpec(
        kind=runtime_kind,
        model_path=path,
        model_name="demo",
        device="cpu",
        threads=available_cpus(),
        options=OnnxOptions(optimized_cache_dir=None)
        if runtime_kind == "onnx"
        else TorchOptions(compile=compile_),
    )
    started = time.perf_counter()
    runtime = load(spec)
    load_s = time.perf_counter() - started
    warm_s = 0.0
    if warm:
        started = time.perf_counter()
        warm_up(runtime, batch_sizes, count=3)
        warm_s = time.perf_counter() - started
    rows = []
    rng = np.random.default_rng(0)
    for batch in batch_sizes:
        x = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
        latencies = []
        for _ in range(calls + 1):
            started = time.perf_counter()
            runtime.infer({"input": x})
            latencies.append(time.perf_counter() - started)
        rows.append({"batch": batch, "first_s": latencies[0], "steady_s": statistics.median(latencies[1:])})
    return {"kind": kind, "warm": warm, "load_s": load_s, "warm_s": warm_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--runtimes", default="onnx,torch", help="onnx, torch, torch-compile")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per row; medians are shown")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.child, sizes, args.calls, Path(args.cache), args.warm)))
        return
    cache = Path(tempfile.mkdtemp(prefix="warmgate-bench-"))
    print("| runtime | in-process warmup | load | batch | first call | steady p50 | first/steady |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.runtimes.split(","):
        for warm in (False, True):
            command = [sys.executable, __file__, "--child", kind, "--cache", str(cache)]
            command += ["--batch-sizes", args.batch_sizes, "--calls", str(args.calls)] + (
                ["--warm"] if warm else []
            )
            results = []
            for _ in range(args.repeat):
                output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
                results.append(json.loads(output.strip().splitlines()[-1]))
            load_s = statistics.median(r["load_s"] for r in results)
            warm_s = statistics.median(r["warm_s"] for r in results)
            warmup = f"yes ({warm_s * 1000:.0f} ms)" if warm else "no"
            for index, batch in enumerate(sizes):
                first = statistics.median(r["rows"][index]["first_s"] for r in results)
                steady = statistics.median(r["rows"][index]["steady_s"] for r in results)
                print(
                    f"| {kind} | {warmup} | {load_s * 1000:.0f} ms | {batch} | "
                    f"{first * 1000:.1f} ms | {steady * 1000:.1f} ms | {first / steady:.1f}x |"
                )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
