"""Time from pod start to ready in each deployment mode, with podman pods (not a timed test).

Each fresh start creates a podman pod (shared loopback, the state directory as a volume), runs the
mode's containers in it and times, from the moment the pod is created, until the ready marker
(ready.json) appears in the state directory. Modes (docs/kubernetes.md):

  entrypoint   the warmgate image runs the server itself: ENTRYPOINT `warmgate run --` with the
               image's CMD (`warmgate serve --demo`, the first version's figure)
  injected     an init step copies (`cp -R`) /opt/warmgate-bundle/. out of the warmgate image into a volume
               (the chart's init container), then the server's own image runs
               `<volume>/warmgate run -- <its command>` (the self-contained bundle)
  sidecar      the server's image untouched; `warmgate sidecar` from the warmgate image warms and
               gates it from outside over the pod's loopback and writes the marker

Servers: `demo` (the warmgate image's `warmgate serve --demo`; injected runs the bundle inside the
warmgate image itself, so entrypoint vs injected compares the same server) and `mlserver` (MLServer
1.7.1 on Debian's python3 serving a tiny numpy model, tests/deploy/foreign_images.py; injected and
sidecar only: the warmgate image has no MLServer). Every run has the same short load test and a
gate that tolerates a shared machine, so the figure is the path, not a verdict.

    python bench/pod_modes.py [--modes entrypoint,injected] [--servers demo,mlserver] [--starts 3]
                              [--load-duration 2] [--json out.json]

Images are built (or reused by content hash) in the container store of the tests
(WARMGATE_CONTAINER_STORE, default /var/tmp/warmgate-container-test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from common import fmt, machine, median_spread, write_json  # noqa: E402

from tests.deploy.conftest import find_tool  # noqa: E402
from tests.deploy.foreign_images import MLSERVER, ForeignServer, foreign_warmup  # noqa: E402
from tests.deploy.podman import (  # noqa: E402
    RUN_FLAGS,
    Tools,
    container_store,
    ensure_warmgate_image,
    tools_at,
)

MODES = ("entrypoint", "injected", "sidecar")
SERVERS = ("demo", "mlserver")
READY_DEADLINE_S = 300.0
POLL_S = 0.01
BUNDLE_MOUNT = "/warmgate"
CONFIG_MOUNT = "/etc/warmgate-bench"
STATE_MOUNT = "/var/run/warmgate"
PROBE_PORT = 8086
# The warmgate image's own server, as its CMD runs it (the Dockerfile), on loopback only here.
DEMO_COMMAND = ("warmgate", "serve", "--demo", "--host", "127.0.0.1", "--port", "8000")
VENV_WARMGATE = "/opt/warmgate/bin/warmgate"


@dataclass
class Bench:
    tools: Tools
    warmgate_image: str
    images: dict[str, str]
    load_duration_s: float
    workdir: Path


@dataclass
class Start:
    """One fresh pod start: seconds from pod creation to the marker, and what went before."""

    mode: str
    server: str
    to_ready_s: float | None = None
    # From warmgate's start (status.json started_at) to the marker: the part that is warmgate and
    # the server, without the container runtime's work (on a vfs store, creating a container copies
    # its whole image, which a node's overlay store does not).
    warmgate_to_ready_s: float | None = None
    init_copy_s: float | None = None
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        raise SystemExit(f"{name} is not installed (bash .ci/install-tools.sh)")
    return path


def podman(
    bench: Bench, *argv: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*bench.tools.podman, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(argv[:4])} exited {done.returncode}: {done.stderr[-1500:]}")
    return done


def demo_warmup(load_duration_s: float) -> dict[str, Any]:
    """The image's default config with the bench's load test and a noise-tolerant gate."""
    warmup: dict[str, Any] = yaml.safe_load((REPO / "warmup.yaml").read_text())
    warmup["server"]["command"] = list(DEMO_COMMAND)
    warmup["load_test"] = {**warmup["load_test"], "duration_s": load_duration_s}
    warmup["gate"] = {**warmup.get("gate", {}), "max_first_to_steady_ratio": 1000.0}
    warmup.pop("state_dir", None)
    return warmup


def server_warmup(server: str, load_duration_s: float) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(warmup.yaml, server command) for one server."""
    if server == "demo":
        return demo_warmup(load_duration_s), DEMO_COMMAND
    foreign: ForeignServer = MLSERVER
    return foreign_warmup(foreign, load_duration_s=load_duration_s), foreign.command


def prepare(bench: Bench, server: str) -> tuple[Path, Path, Path, tuple[str, ...]]:
    """A fresh workdir with a world-writable state dir and the config; returns them and the command."""
    run_dir = Path(tempfile.mkdtemp(dir=bench.workdir))
    state = run_dir / "state"
    state.mkdir()
    state.chmod(0o777)
    config = run_dir / "config"
    config.mkdir()
    warmup, command = server_warmup(server, bench.load_duration_s)
    (config / "warmup.yaml").write_text(yaml.safe_dump(warmup))
    config.chmod(0o755)
    return run_dir, state, config, command


def common_flags(state: Path, config: Path, pod: str) -> list[str]:
    return [
        *RUN_FLAGS, "--pod", pod,
        "-v", f"{state}:{STATE_MOUNT}", "-v", f"{config}:{CONFIG_MOUNT}:ro",
        "-e", f"WARMGATE_CONFIG={CONFIG_MOUNT}/warmup.yaml", "-e", f"WARMGATE_STATE_DIR={STATE_MOUNT}",
    ]  # fmt: skip


def start_probe_sidecar(bench: Bench, state: Path, config: Path, pod: str) -> None:
    podman(
        bench, "run", "--detach", *common_flags(state, config, pod), "--entrypoint", "warmgate",
        bench.warmgate_image, "probe", "--port", str(PROBE_PORT),
    )  # fmt: skip


def start_entrypoint(bench: Bench, server: str, state: Path, config: Path, pod: str, run_dir: Path) -> Start:
    if server != "demo":
        raise ValueError("entrypoint mode runs the warmgate image's own server only (--servers demo)")
    _warmup, command = server_warmup(server, bench.load_duration_s)
    podman(bench, "run", "--detach", *common_flags(state, config, pod), bench.warmgate_image, *command)
    start_probe_sidecar(bench, state, config, pod)
    return Start("entrypoint", server)


def start_injected(bench: Bench, server: str, state: Path, config: Path, pod: str, run_dir: Path) -> Start:
    volume = run_dir / "warmgate"
    volume.mkdir()
    volume.chmod(0o777)
    copy_started = time.monotonic()
    podman(
        bench, "run", "--rm", *RUN_FLAGS, "--pod", pod, "-v", f"{volume}:{BUNDLE_MOUNT}",
        "--entrypoint", "cp", bench.warmgate_image, "-R", "/opt/warmgate-bundle/.", f"{BUNDLE_MOUNT}/",
    )  # fmt: skip
    copied = time.monotonic() - copy_started
    _warmup, command = server_warmup(server, bench.load_duration_s)
    if server == "demo":
        # The image's own install: `warmgate` run by the bundle means the bundle itself (this
        # same installation, entrypoint/spawn.py), which has no `serve`.
        command = (VENV_WARMGATE, *command[1:])
    image = bench.warmgate_image if server == "demo" else bench.images[server]
    podman(
        bench, "run", "--detach", *common_flags(state, config, pod),
        "-v", f"{volume}:{BUNDLE_MOUNT}:ro", "--entrypoint", f"{BUNDLE_MOUNT}/warmgate",
        image, "run", "--", *command,
    )  # fmt: skip
    start_probe_sidecar(bench, state, config, pod)
    return Start("injected", server, init_copy_s=copied)


def start_sidecar(bench: Bench, server: str, state: Path, config: Path, pod: str, run_dir: Path) -> Start:
    """Sidecar mode: the server's image runs its own command untouched (no warmgate, no state
    volume in it); `warmgate sidecar` from the warmgate image waits for it over the pod's loopback,
    warms and gates it, and writes the marker in its own state directory."""
    _warmup, command = server_warmup(server, bench.load_duration_s)
    if server == "demo":
        # The warmgate image's reference server on its own, as a foreign image's CMD would run.
        podman(
            bench, "run", "--detach", *RUN_FLAGS, "--pod", pod, "--entrypoint", command[0],
            bench.warmgate_image, *command[1:],
        )  # fmt: skip
    else:
        image = bench.images[server]
        podman(bench, "run", "--detach", *RUN_FLAGS, "--pod", pod, "--user", MLSERVER.user, image)
    podman(
        bench, "run", "--detach", *common_flags(state, config, pod), "--entrypoint", "warmgate",
        bench.warmgate_image, "sidecar", "--port", str(PROBE_PORT),
    )  # fmt: skip
    return Start("sidecar", server)


STARTERS: dict[str, Callable[[Bench, str, Path, Path, str, Path], Start]] = {
    "entrypoint": start_entrypoint,
    "injected": start_injected,
    "sidecar": start_sidecar,
}


def one_start(bench: Bench, mode: str, server: str) -> Start:
    run_dir, state, config, _command = prepare(bench, server)
    pod = f"warmgate-bench-{run_dir.name[-8:].lower().replace('_', '-')}"
    started = time.monotonic()
    podman(bench, "pod", "create", "--name", pod, "--network", "none")
    try:
        result = STARTERS[mode](bench, server, state, config, pod, run_dir)
        marker = state / "ready.json"
        deadline = started + READY_DEADLINE_S
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ready marker within {READY_DEADLINE_S:g}s")
            status = read_json(state / "status.json")
            if status and status.get("phase") == "failed":
                raise RuntimeError(f"warmgate failed: {status.get('reason', status)}")
            time.sleep(POLL_S)
        result.to_ready_s = time.monotonic() - started
        status = read_json(state / "status.json") or {}
        if isinstance(status.get("started_at"), (int, float)):
            result.warmgate_to_ready_s = marker.stat().st_mtime - float(status["started_at"])
        report = read_json(marker) or {}
        result.phases = {name: float(value) for name, value in (report.get("phases") or {}).items()
                         if isinstance(value, (int, float))}  # fmt: skip
        return result
    except (RuntimeError, TimeoutError) as exc:
        return Start(mode, server, error=str(exc)[:500])
    finally:
        podman(bench, "pod", "rm", "--force", "--time", "0", pod, check=False)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def cells(modes: list[str], servers: list[str]) -> list[tuple[str, str]]:
    return [
        (mode, server)
        for mode in modes
        for server in servers
        if not (mode == "entrypoint" and server != "demo")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="entrypoint,injected")
    parser.add_argument("--servers", default="demo,mlserver")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--load-duration", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    modes, servers = args.modes.split(","), args.servers.split(",")
    if unknown := (set(modes) - set(MODES)) | (set(servers) - set(SERVERS)):
        parser.error(f"unknown modes or servers: {sorted(unknown)}")

    tools = tools_at(container_store(), require=require_tool)
    with tempfile.TemporaryDirectory(prefix="pod-modes-") as scratch:
        workdir = Path(scratch)
        built = time.monotonic()
        warmgate_image = ensure_warmgate_image(tools, workdir / "base")
        images = {"mlserver": MLSERVER.build(tools, workdir / "foreign")} if "mlserver" in servers else {}
        print(f"images ready in {time.monotonic() - built:.0f}s: {warmgate_image} {images}", flush=True)
        bench = Bench(tools, warmgate_image, images, args.load_duration, workdir)
        plan = cells(modes, servers)
        starts: list[Start] = []
        # Alternate the cells start by start so drifting load hits every cell alike.
        for index in range(args.starts):
            for mode, server in plan:
                start = one_start(bench, mode, server)
                starts.append(start)
                print(
                    f"start {index + 1} {mode}/{server}: {fmt(start.to_ready_s, 2, ' s')}",
                    start.error or "",
                    flush=True,
                )

    summary = {}
    print(
        f"\n{'mode':<11} {'server':<9} {'pod start to ready (median, min-max)':<38} "
        f"{'warmgate start to ready':<24} init copy"
    )
    for mode, server in plan:
        mine = [s for s in starts if (s.mode, s.server) == (mode, server)]
        ready = median_spread([s.to_ready_s for s in mine if s.to_ready_s is not None])
        copy = median_spread([s.init_copy_s for s in mine if s.init_copy_s is not None])
        own = median_spread([s.warmgate_to_ready_s for s in mine if s.warmgate_to_ready_s is not None])
        summary[f"{mode}/{server}"] = {
            "warmgate_to_ready_s": own,
            "to_ready_s": ready,
            "init_copy_s": copy,
            "errors": [s.error for s in mine if s.error],
        }
        spread = (
            f"{fmt(ready['median'], 2)} s ({fmt(ready['min'], 2)}-{fmt(ready['max'], 2)}, n={ready['n']})"
        )
        own_spread = f"{fmt(own['median'], 2)} s ({fmt(own['min'], 2)}-{fmt(own['max'], 2)})"
        print(f"{mode:<11} {server:<9} {spread:<38} {own_spread:<24} {fmt(copy['median'], 2, ' s')}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "settings": {"starts": args.starts, "load_duration_s": args.load_duration},
            "summary": summary,
            "starts": [s.__dict__ for s in starts],
        },
    )


if __name__ == "__main__":
    main()
