"""`warmgate probe` as a real process: listening, TERM handling, exit codes, import weight."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.probe.fakes import FakeModelServer, full_report, poll_until
from warmgate.cli import run_cli
from warmgate.state import Phase, StateWriter

pytestmark = pytest.mark.timeout(60)

WARMGATE = [sys.executable, "-c", "from warmgate.cli import main; main()"]
LISTENING = re.compile(r"probe listening on http://127\.0\.0\.1:(\d+)")


def write_config(tmp_path: Path, server_url: str, **probe: Any) -> Path:
    path = tmp_path / "warmup.yaml"
    document = {
        "state_dir": str(tmp_path / "state"),
        "server": {"url": server_url, "command": ["unused"]},
        "probe": {"check_cache_s": 0, **probe},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARMGATE_", "POD_", "KUBERNETES_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProbeProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output: list[str] = []

    @classmethod
    async def start(cls, config: Path, *extra: str) -> tuple[ProbeProcess, int]:
        process = await asyncio.create_subprocess_exec(
            *WARMGATE, "probe", "-c", str(config), "--host", "127.0.0.1", "--port", "0", *extra,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        child = cls(process)
        port = int((await child.expect(LISTENING)).group(1))
        return child, port

    async def expect(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern.pattern!r}; output:\n" + "\n".join(self.output)
                )
            line = await asyncio.wait_for(self.process.stderr.readline(), remaining)
            if not line:
                raise AssertionError(f"exited before {pattern.pattern!r}; output:\n" + "\n".join(self.output))
            self.output.append(line.decode().rstrip())
            match = pattern.search(self.output[-1])
            if match:
                return match

    async def wait(self, timeout: float = 20.0) -> int:
        assert self.process.stderr is not None
        rest = await asyncio.wait_for(self.process.stderr.read(), timeout)
        self.output.extend(rest.decode().splitlines())
        return await asyncio.wait_for(self.process.wait(), timeout)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return -1


def make_ready(state_dir: Path) -> None:
    writer = StateWriter(state_dir)
    writer.prepare()
    writer.write_ready(full_report(writer.instance_id))
    writer.set_phase(Phase.READY, "ready")


async def test_term_answers_503_then_exits(tmp_path: Path, model_server: FakeModelServer) -> None:
    config = write_config(tmp_path, model_server.url)
    make_ready(tmp_path / "state")
    child, port = await ProbeProcess.start(config, "--shutdown-delay", "30")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            assert await status_of(session, f"{base}/readyz") == 200
            assert await status_of(session, f"{base}/startupz") == 200
            child.process.send_signal(signal.SIGTERM)

            async def healthz() -> int:
                return await status_of(session, f"{base}/healthz")

            await poll_until(healthz, lambda s: s == 503, what="503 after TERM")
            for path in ("/readyz", "/startupz", "/livez"):
                async with session.get(base + path) as response:
                    assert response.status == 503
                    assert (await response.json())["reason"] == "probe is shutting down"
        # Still serving 503 (the delay is 30 s); a second TERM exits at once.
        assert child.process.returncode is None
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
    finally:
        child.kill()
    log = "\n".join(child.output)
    assert "SIGTERM: answering 503 on every endpoint, exiting in 30s" in log
    assert "SIGTERM again: exiting now" in log


async def test_term_exits_after_the_delay_on_its_own(tmp_path: Path, model_server: FakeModelServer) -> None:
    config = write_config(tmp_path, model_server.url)
    child, _ = await ProbeProcess.start(config, "--shutdown-delay", "0.2")
    try:
        child.process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0
    finally:
        child.kill()
    assert any("exiting in 0.2s" in line for line in child.output), child.output


def test_gate_off_never_imports_the_kubernetes_client(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1")
    script = f"""
import asyncio, signal, sys
from pathlib import Path
from warmgate.config import load_config
from warmgate.probe.server import serve
from tests.probe.fakes import probe_parts

async def main():
    signals = asyncio.Queue()
    def listening(addresses):
        signals.put_nowait(signal.SIGTERM)
    config = load_config(Path({str(config)!r}), {{}})
    code = await serve(*probe_parts(config), host="127.0.0.1", port=0, shutdown_delay_s=0, environ={{}},
                       on_listening=listening, signals=signals)
    assert code == 0, code
    heavy = sorted(name for name in sys.modules if name.split(".")[0] == "kubernetes")
    assert not heavy, heavy

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("arguments", "environ", "message"),
    [
        (["--port", "70000"], {}, "--port: must be between 0 and 65535"),
        (["--shutdown-delay", "-1"], {}, "--shutdown-delay: must be >= 0"),
        ([], {"WARMGATE_READINESS_GATE": "true"}, "POD_NAME and POD_NAMESPACE"),
        (
            [],
            {"WARMGATE_READINESS_GATE": "true", "POD_NAME": "p", "POD_NAMESPACE": "n"},
            "KUBERNETES_SERVICE_HOST",
        ),
    ],
    ids=["port", "delay", "gate-without-pod", "gate-outside-cluster"],
)
def test_usage_errors_exit_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    environ: dict[str, str],
    message: str,
) -> None:
    for name in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = write_config(tmp_path, "http://127.0.0.1:1")
    assert run_cli(["probe", "-c", str(config), "--host", "127.0.0.1", *arguments]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("warmgate: ") and message in error


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A real process: `warmgate probe` execs its serving process, which finds the port taken.
        done = subprocess.run(
            [*WARMGATE, "probe", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)],
            capture_output=True, text=True, timeout=60, env=child_env(), check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
