"""What the injected and sidecar-mode pod tests share: the pod's config and environment, the pod's
containers, the infer body a foreign server answers, and clients that keep sending through a drain.

The clients run inside the sidecar container (the warmgate image has python3; the foreign images
may have none): four threads send inference requests while /readyz says 200 and keep sending for
`follow_s` after it turns 503 (traffic keeps coming until endpoints move; the quiet period covers
that). The script prints "answered <n>" once `answered_first` requests were answered (the handshake
the tests wait for before they stop or drain the server: the stop must meet traffic already
flowing), then one JSON line: counts and the first failures. A failure or no such answers within
HANDSHAKE_DEADLINE_S ends it early, with the JSON line in place of the handshake.
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.foreign_images import ForeignServer, foreign_warmup
from tests.deploy.podman import (
    CONFIG_MOUNT,
    STATE_MOUNT,
    Container,
    Tools,
    config_dir,
    container,
    world_writable_dir,
)

PROBE_PORT = 8086
# Short, so that a drain test is quick; the clients keep sending for a third of it after /readyz
# turned 503 (endpoints moving), which it must cover.
QUIET_PERIOD_S = 3.0
FOLLOW_S = QUIET_PERIOD_S / 3
# Answered requests before the stop or the drain: the load it must meet, several per client thread.
ANSWERED_FIRST = 20
# For those answers, from the clients' start (an MLServer in a loaded pod answers within seconds).
HANDSHAKE_DEADLINE_S = 60.0

DRAIN_CLIENT = """
import json, sys, threading, time, urllib.request
url, readyz, follow_s, body = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].encode()
answered_first, handshake_s = int(sys.argv[5]), float(sys.argv[6])
state = {"ok": 0, "failed": [], "unready_at": None, "stop": False}
lock = threading.Condition()
def summary():
    return json.dumps({"ok": state["ok"], "failed": len(state["failed"]), "first": state["failed"][:5],
                       "saw_unready": state["unready_at"] is not None})
def stop():
    state["stop"] = True
    for thread in threads:
        thread.join()
def client():
    while not state["stop"]:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                answer.read()
                outcome = answer.status
        except Exception as exc:
            outcome = repr(exc)
        with lock:
            if outcome == 200:
                state["ok"] += 1
            else:
                state["failed"].append(str(outcome)[:200])
            lock.notify_all()
threads = [threading.Thread(target=client) for _ in range(4)]
for thread in threads:
    thread.start()
with lock:
    lock.wait_for(lambda: state["ok"] >= answered_first or state["failed"], timeout=handshake_s)
    handshake = state["ok"] >= answered_first and not state["failed"]
if not handshake:
    stop()
    print(summary(), flush=True)
    sys.exit(1)
print("answered", state["ok"], flush=True)
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        status = urllib.request.urlopen(readyz, timeout=2).status
    except Exception:
        status = 503
    if status != 200 and state["unready_at"] is None:
        state["unready_at"] = time.monotonic()
    if state["unready_at"] is not None and time.monotonic() > state["unready_at"] + follow_s:
        break
    time.sleep(0.02)
stop()
print(summary(), flush=True)
"""


@dataclass(frozen=True)
class PodConfig:
    """What both modes give warmgate in the pod: a state directory (shared by the server's and the
    sidecar's containers) and the warmup.yaml, named by `env` and mounted by `mount`."""

    state: Path
    mount: tuple[str, ...]
    env: tuple[str, ...]


def pod_config(tmp_path: Path, server: ForeignServer) -> PodConfig:
    """The same warmup for both modes: sidecar mode ignores its server.command (the server's image
    runs its own command)."""
    config = config_dir(tmp_path / "config", foreign_warmup(server, quiet_period_s=QUIET_PERIOD_S))
    return PodConfig(
        state=world_writable_dir(tmp_path / "state"),
        mount=("-v", f"{config}:{CONFIG_MOUNT}:ro"),
        env=(f"WARMGATE_CONFIG={CONFIG_MOUNT}/warmup.yaml", f"WARMGATE_STATE_DIR={STATE_MOUNT}"),
    )


def warmgate_sidecar(
    tools: Tools, warmgate_image: str, pod_name: str, setup: PodConfig, subcommand: str
) -> AbstractContextManager[Container]:
    """The sidecar of either mode: `warmgate <subcommand> --port PROBE_PORT` from the warmgate image
    in the pod, with the pod's config and state."""
    return container(
        tools, warmgate_image, setup.state, *setup.env, network=("--pod", pod_name),
        extra=(*setup.mount, "--entrypoint", "warmgate"), command=(subcommand, "--port", str(PROBE_PORT)),
    )  # fmt: skip


@dataclass
class Pod:
    name: str
    spec: ForeignServer
    server: Container
    sidecar: Container
    state: Path


def infer_body(server: ForeignServer) -> str:
    """An OIP infer request for the server's first warmup shape."""
    shape = server.shapes[0]
    name, spec = next(iter(shape["inputs"].items()))
    dims = [shape["batch_size"], *spec["dims"]]
    count = 1
    for dim in dims:
        count *= dim
    return json.dumps(
        {"inputs": [{"name": name, "datatype": spec["datatype"], "shape": dims, "data": [0.5] * count}]}
    )


@contextlib.contextmanager
def clients_sending(
    tools: Tools, the_pod: Pod, *, follow_s: float = FOLLOW_S, answered_first: int = ANSWERED_FIRST
) -> Iterator[Callable[[float], dict[str, Any]]]:
    """Start the clients inside the pod's sidecar container and wait (HANDSHAKE_DEADLINE_S at most)
    until `answered_first` of their requests were answered; yields a function that waits (at most
    its argument, in seconds) for their JSON summary, with their stderr tail under "stderr". The
    clients are killed on the way out if still running."""
    server = the_pod.spec
    client = subprocess.Popen(
        [
            *tools.podman, "exec", the_pod.sidecar.name, "python3", "-c", DRAIN_CLIENT,
            f"{server.url}/v2/models/{server.model}/infer", f"http://127.0.0.1:{PROBE_PORT}/readyz",
            str(follow_s), infer_body(server), str(answered_first), str(HANDSHAKE_DEADLINE_S),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def summary(timeout_s: float) -> dict[str, Any]:
        out, err = client.communicate(timeout=timeout_s)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["stderr"] = err[-2000:]
        return result

    try:
        assert client.stdout is not None
        # The script keeps its own deadline; this one (with room for `podman exec` to start)
        # covers a client that never gets to it.
        readable, _, _ = select.select([client.stdout], [], [], HANDSHAKE_DEADLINE_S + 30)
        first = client.stdout.readline().strip() if readable else ""
        words = first.split()
        if len(words) != 2 or words[0] != "answered" or int(words[1]) < answered_first:
            client.kill()
            rest, err = client.communicate(timeout=30)
            raise AssertionError(
                f"the clients got no {answered_first} answers: {first!r} {rest[-2000:]}\n{err[-2000:]}"
            )
        yield summary
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
