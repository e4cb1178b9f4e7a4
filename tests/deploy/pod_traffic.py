"""Traffic inside a podman pod, shared by the injected and sidecar-mode pod tests: the infer body a
foreign server answers, and clients that keep sending through a drain.

The clients run inside the sidecar container (the warmgate image has python3; the foreign images
may have none): four threads send inference requests while /readyz says 200 and keep sending for
`follow_s` after it turns 503 (traffic keeps coming until endpoints move; the quiet period covers
that). The script prints "sending" once they started, then one JSON line: counts and the first
failures.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.deploy.foreign_images import ForeignServer
from tests.deploy.podman import Tools

DRAIN_CLIENT = """
import json, sys, threading, time, urllib.request
url, readyz, follow_s, body = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4].encode()
state = {"ok": 0, "failed": [], "unready_at": None, "stop": False}
lock = threading.Lock()
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
threads = [threading.Thread(target=client) for _ in range(4)]
for thread in threads:
    thread.start()
print("sending", flush=True)
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
state["stop"] = True
for thread in threads:
    thread.join()
print(json.dumps({"ok": state["ok"], "failed": len(state["failed"]), "first": state["failed"][:5],
                  "saw_unready": state["unready_at"] is not None}), flush=True)
"""


def world_writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the containers' non-root users write here
    return path


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
    tools: Tools, sidecar_name: str, server: ForeignServer, *, probe_port: int, follow_s: float
) -> Iterator[Callable[[float], dict[str, Any]]]:
    """Start the clients inside the sidecar container and wait until they send; yields a function
    that waits (at most its argument, in seconds) for their JSON summary, with their stderr tail
    under "stderr". The clients are killed on the way out if still running."""
    client = subprocess.Popen(
        [
            *tools.podman, "exec", sidecar_name, "python3", "-c", DRAIN_CLIENT,
            f"{server.url}/v2/models/{server.model}/infer", f"http://127.0.0.1:{probe_port}/readyz",
            str(follow_s), infer_body(server),
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
        assert client.stdout.readline().strip() == "sending"
        yield summary
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
