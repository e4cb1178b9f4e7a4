"""Sidecar-only mode in podman pods: the server images that are not warmgate's
(tests/deploy/foreign_images.py: nginx with no Python at all, MLServer on Debian's python3) run
their own command, unchanged; `warmgate sidecar` from the warmgate image, in the same pod (shared
loopback), warms and gates them from outside, the way the chart's sidecar mode runs them:

- ready after warm: the marker in the sidecar's state directory, /readyz 200;
- drain as the server container's `preStop: httpGet` does it: GET /drain on the sidecar holds for
  the quiet period while readiness fails, and only then is the server stopped (the kubelet's TERM,
  here `podman stop`); clients that keep sending until endpoints move (a third of the quiet
  period after /readyz turned 503) see no failure;
- the stopped server started again is warmed again (cycle 2); a SIGKILLed one drops readiness
  (marker gone, /readyz 503) and its restart is warmed again (cycle 3).

Skipped when podman is missing and CI is not set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.foreign_images import FOREIGN_SERVERS, ForeignServer
from tests.deploy.pod_traffic import (
    PROBE_PORT,
    QUIET_PERIOD_S,
    Pod,
    clients_sending,
    pod_config,
    warmgate_sidecar,
)
from tests.deploy.podman import Tools, container, pod, read_status, run, wait_for

pytestmark = [pytest.mark.container, pytest.mark.slow]

READY_DEADLINE_S = 240.0
LOST_DEADLINE_S = 15.0

# One GET from inside the pod: prints the status code and the seconds the answer took.
TIMED_GET = """
import sys, time, urllib.request, urllib.error
started = time.monotonic()
try:
    code = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status
except urllib.error.HTTPError as exc:
    code = exc.code
print(code, time.monotonic() - started)
"""


class SidecarPod(Pod):
    @property
    def marker(self) -> Path:
        return self.state / "ready.json"

    def get(self, path: str, timeout_s: float = 30) -> tuple[int, float]:
        done = self.sidecar.exec(
            "python3", "-c", TIMED_GET, f"http://127.0.0.1:{PROBE_PORT}{path}", str(timeout_s)
        )
        code, seconds = done.stdout.split()
        return int(code), float(seconds)

    def status(self) -> dict[str, Any]:
        status = read_status(self.state)
        assert status is not None, "no status.json"
        return status

    def wait_ready(self, cycle: int) -> dict[str, Any]:
        def ready_in_cycle() -> bool:
            status = read_status(self.state)
            return (
                self.marker.exists()
                and status is not None
                and status["phase"] == "ready"
                and status["message"].startswith(f"warm cycle {cycle}:")
            )

        # Both must be running meanwhile: an exited server fails at once, with its log.
        wait_for(ready_in_cycle, READY_DEADLINE_S, f"ready in warm cycle {cycle}", self.sidecar, self.server)
        report: dict[str, Any] = json.loads(self.marker.read_text())
        assert report["gate"]["passed"] is True, report["gate"]
        assert self.get("/readyz")[0] == 200
        return report


@pytest.fixture
def sidecar_pod(
    request: pytest.FixtureRequest,
    tools: Tools,
    warmgate_image: str,
    foreign_images: dict[str, str],
    tmp_path: Path,
) -> Iterator[SidecarPod]:
    server: ForeignServer = request.param
    setup = pod_config(tmp_path, server)
    with pod(tools) as pod_name:
        in_pod = ("--pod", pod_name)
        with (
            # The server: its own image, its own entrypoint and command, nothing of warmgate.
            container(tools, foreign_images[server.name], None, network=in_pod, extra=("--user", server.user))
            as server_box,
            warmgate_sidecar(tools, warmgate_image, pod_name, setup, "sidecar") as sidecar_box,
        ):  # fmt: skip
            yield SidecarPod(pod_name, server, server_box, sidecar_box, setup.state)


def lost(the_pod: SidecarPod) -> bool:
    return not the_pod.marker.exists() and the_pod.status()["phase"] != "ready"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("sidecar_pod", FOREIGN_SERVERS, ids=[s.name for s in FOREIGN_SERVERS], indirect=True)
def test_sidecar_warms_drains_and_rewarms_an_unchanged_foreign_server(
    tools: Tools, sidecar_pod: SidecarPod
) -> None:
    the_pod = sidecar_pod
    first = the_pod.wait_ready(cycle=1)
    assert the_pod.get("/startupz")[0] == 200
    assert first["load_test"]["requests"] > 0 and first["load_test"]["errors"] == {}
    assert "server.command is ignored" in the_pod.sidecar.logs()

    # preStop: GET /drain, then (only once it answered) the kubelet's TERM to the server, with
    # clients sending until endpoints move; the drain once their first answers came (the
    # handshake): it meets traffic in flight.
    with clients_sending(tools, the_pod) as drained_by:
        code, held_s = the_pod.get("/drain")
        assert code == 200 and held_s >= QUIET_PERIOD_S, (code, held_s)
        assert the_pod.status()["phase"] == "draining" and not the_pod.marker.exists()
        run([*tools.podman, "stop", "--time", "30", the_pod.server.name], timeout=60)
        drained = drained_by(60)
    assert drained["saw_unready"], drained
    assert drained["failed"] == 0 and drained["ok"] > 0, (drained, the_pod.sidecar.logs()[-3000:])
    wait_for(
        lambda: the_pod.status()["phase"] == "waiting-for-server", LOST_DEADLINE_S, "the wait for a server"
    )
    assert the_pod.get("/readyz")[0] == 503

    # The kubelet restarts the server container: warmed again before it is ready.
    run([*tools.podman, "start", the_pod.server.name])
    the_pod.wait_ready(cycle=2)

    # A crash: readiness drops within the watch's deadline, and the restart is warmed again.
    run([*tools.podman, "kill", "--signal", "KILL", the_pod.server.name])
    wait_for(lambda: lost(the_pod), LOST_DEADLINE_S, "readiness lost with the server", the_pod.sidecar)
    assert the_pod.get("/readyz")[0] == 503
    run([*tools.podman, "start", the_pod.server.name])
    third = the_pod.wait_ready(cycle=3)
    assert third["instance_id"] == first["instance_id"]
    logs = the_pod.sidecar.logs()
    assert "server lost:" in logs and "drain requested" in logs
    assert "Traceback" not in logs, logs[-3000:]
