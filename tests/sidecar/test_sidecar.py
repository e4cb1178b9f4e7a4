"""`warmgate sidecar` against the reference server, both real processes: warm cycles, a server lost
and back, /drain for the server's preStop hook, TERM, bad config, a gate that never passes."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.sidecar.conftest import PY, Servers, Sidecar, get, needs_demo, sidecar_config
from tests.support.procs import WARMGATE, free_port, poll_until, warmgate_env
from warmgate import exitcodes


class BackgroundGet:
    """A GET that the test does not wait for (the preStop hook's), timed from its start."""

    def __init__(self, url: str) -> None:
        self.started = time.monotonic()
        self.answer: tuple[int, dict[str, Any]] | None = None
        self.elapsed_s: float | None = None
        self._thread = threading.Thread(target=self._get, args=(url,), daemon=True)
        self._thread.start()

    def _get(self, url: str) -> None:
        self.answer = get(url, timeout=30)
        self.elapsed_s = time.monotonic() - self.started

    def join(self, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
        self._thread.join(timeout)
        assert self.answer is not None, "no answer"
        return self.answer


def metrics(sidecar: Sidecar) -> str:
    with urllib.request.urlopen(sidecar.base + "/metrics", timeout=10) as response:
        return str(response.read().decode())


def lost_readiness(sidecar: Sidecar) -> bool:
    return sidecar.get("/readyz")[0] == 503 and not (sidecar.state_dir / "ready.json").exists()


@needs_demo
@pytest.mark.timeout(240)
def test_not_ready_until_warm_then_lost_with_the_server_and_warm_again_after_its_restart(
    servers: Servers, start_sidecar: Callable[..., Sidecar]
) -> None:
    sidecar = start_sidecar(servers.port)
    # No server yet: not ready, not started, but alive enough not to be restarted for it.
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.get("/startupz")[0] == 503
    assert sidecar.get("/livez")[0] == 200
    assert sidecar.get("/healthz")[0] == 200
    poll_until(lambda: sidecar.status()["phase"] == "waiting-for-server")

    server = servers.start()
    first = sidecar.wait_ready()
    assert first["gate"]["passed"] and first["load_test"]["requests"] > 0, first
    assert first["phases"]["waiting-for-server"] > 0, first["phases"]
    assert sidecar.status()["message"].startswith("warm cycle 1:")
    assert sidecar.get("/startupz")[0] == 200
    assert "warmgate_ready 1.0" in metrics(sidecar)

    server.signal(signal.SIGKILL)
    server.wait()
    lost_at = time.monotonic()
    poll_until(lambda: lost_readiness(sidecar), timeout=10, interval=0.05)
    assert time.monotonic() - lost_at < 5, "readiness outlived the server by more than the watch allows"
    status = sidecar.status()
    assert status["phase"] == "waiting-for-server", status
    assert sidecar.get("/startupz")[0] == 503

    servers.start()
    second = sidecar.wait_ready()
    assert sidecar.status()["message"].startswith("warm cycle 2:")
    assert second["instance_id"] == first["instance_id"]
    assert second["created_at"] > first["created_at"]
    sidecar.proc.expect("warm cycle 2: gate passed")
    assert "server lost:" in sidecar.proc.output

    sidecar.proc.signal(signal.SIGTERM)
    assert sidecar.proc.wait() == 0, sidecar.proc.output
    assert sidecar.status()["phase"] == "stopped"
    assert "Traceback" not in sidecar.proc.output


@needs_demo
@pytest.mark.timeout(240)
def test_drain_fails_readiness_at_once_and_answers_the_hook_after_the_quiet_period(
    servers: Servers, start_sidecar: Callable[..., Sidecar]
) -> None:
    sidecar = start_sidecar(servers.port)
    server = servers.start()
    sidecar.wait_ready()

    hook = BackgroundGet(sidecar.base + "/drain")
    poll_until(lambda: lost_readiness(sidecar), timeout=1.0, interval=0.02)
    assert hook.answer is None, "readiness must fail while the hook is still held"
    assert sidecar.status()["phase"] == "draining"
    code, body = sidecar.get("/readyz")
    assert (code, body["code"]) == (503, "draining")

    code, body = hook.join()
    assert (code, body["code"]) == (200, "drained")
    assert hook.elapsed_s is not None and hook.elapsed_s >= 1.5, hook.elapsed_s
    assert sidecar.get("/readyz")[0] == 503, "still draining after the hook's answer"
    # The hook's route is counted under its own path, like the probe's endpoints.
    assert 'warmgate_probe_requests_total{code="200",endpoint="/drain"} 1.0' in metrics(sidecar)

    # Then the kubelet's TERM reaches the server; its successor is warmed like any other.
    server.signal(signal.SIGTERM)
    server.wait()
    poll_until(lambda: sidecar.status()["phase"] == "waiting-for-server", timeout=10)
    servers.start()
    sidecar.wait_ready()
    assert sidecar.status()["message"].startswith("warm cycle 2:")


@needs_demo
@pytest.mark.timeout(240)
def test_a_drain_that_no_server_stop_follows_ends_with_a_new_warm_cycle(
    servers: Servers, start_sidecar: Callable[..., Sidecar]
) -> None:
    sidecar = start_sidecar(servers.port, drain={"quiet_period_s": 0.5, "grace_period_s": 1})
    servers.start()
    sidecar.wait_ready()
    assert get(sidecar.base + "/drain")[0] == 200
    assert sidecar.get("/readyz")[0] == 503
    sidecar.wait_ready()
    assert sidecar.status()["message"].startswith("warm cycle 2:")
    sidecar.proc.expect("it was not stopped, warming it again")


@pytest.mark.timeout(60)
def test_term_while_a_drain_is_held_answers_the_hook_before_exiting(
    start_sidecar: Callable[..., Sidecar],
) -> None:
    # No server at all: the drain and the sidecar's own exit do not depend on one.
    sidecar = start_sidecar(free_port(), drain={"quiet_period_s": 2.0})
    hook = BackgroundGet(sidecar.base + "/drain")
    poll_until(lambda: sidecar.status()["phase"] == "draining", timeout=5)
    sidecar.proc.signal(signal.SIGTERM)
    assert sidecar.proc.wait() == 0, sidecar.proc.output
    code, body = hook.join()
    assert (code, body["code"]) == (200, "drained")
    assert hook.elapsed_s is not None and hook.elapsed_s >= 2.0, hook.elapsed_s
    assert sidecar.status()["phase"] == "stopped"


@pytest.mark.timeout(60)
def test_a_drain_that_arrives_just_after_term_is_still_held_to_its_end(
    start_sidecar: Callable[..., Sidecar],
) -> None:
    # A plain sidecar container gets its TERM as the server's preStop hook starts: the hook's
    # request may come second, and must still be answered after the whole quiet period.
    sidecar = start_sidecar(free_port(), "--shutdown-delay", "1.0", drain={"quiet_period_s": 3.0})
    sidecar.proc.signal(signal.SIGTERM)
    poll_until(lambda: sidecar.status()["phase"] in {"draining", "stopped"}, timeout=5)
    hook = BackgroundGet(sidecar.base + "/drain")
    code, body = hook.join()
    assert (code, body["code"]) == (200, "drained")
    assert hook.elapsed_s is not None and hook.elapsed_s >= 3.0, hook.elapsed_s
    assert sidecar.proc.wait() == 0, sidecar.proc.output


@needs_demo
@pytest.mark.timeout(120)
def test_a_server_never_warm_enough_stays_unready_and_is_warmed_again_without_exiting(
    servers: Servers, start_sidecar: Callable[..., Sidecar]
) -> None:
    # A p95 no real request meets: every cycle fails its gate.
    sidecar = start_sidecar(servers.port, gate={"p95_ms": 0.001})
    servers.start()
    sidecar.proc.expect("warm cycle 1: gate failed", timeout=60)
    assert sidecar.get("/readyz")[0] == 503
    assert sidecar.status()["phase"] == "failed"
    sidecar.proc.expect("warm cycle 2: gate failed", timeout=60)
    assert sidecar.proc.popen.poll() is None, "the sidecar must never exit over a failed gate"
    code, body = sidecar.get("/readyz")
    assert code == 503 and body["phase"] in {"failed", "waiting-for-server", "warming", "load-testing"}
    assert not (sidecar.state_dir / "ready.json").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"gate": {"p95_ms": -1}}, "gate.p95_ms"),
        ({"probe": {"port": "SAME"}}, "probe.port"),
    ],
)
def test_a_bad_config_exits_2_with_one_line(tmp_path: Path, sections: dict[str, Any], expected: str) -> None:
    server_port = free_port()
    if sections.get("probe") == {"port": "SAME"}:
        sections = {"probe": {"port": server_port}}
    config = sidecar_config(tmp_path / "warmup.yaml", server_port, **sections)
    done = subprocess.run(
        [*WARMGATE, "sidecar", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=50,
        env=warmgate_env(),
        check=False,
    )
    assert done.returncode == exitcodes.CONFIG_ERROR, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "state").exists(), "nothing starts on a bad config"


@pytest.mark.timeout(60)
def test_registering_subcommands_does_not_load_the_engine() -> None:
    # `warmgate probe` registers every subcommand, the sidecar's too: its engine must stay unloaded.
    code = (
        "import sys; from warmgate.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith(('warmgate.entrypoint.engine', "
        "'warmgate.sidecar.main', 'warmgate.sidecar.warmer', 'numpy'))))"
    )
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=50, check=True)
    assert done.stdout.strip() == "[]", done.stdout
