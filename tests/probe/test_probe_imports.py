"""The sidecar's import set: `warmgate probe` reads two small JSON files and serves four endpoints,
so it must not load numerical or ML libraries, the gRPC stack or the Kubernetes client (memory in
every pod of the deployment). Checked on a real process that served the probes and a scrape,
with the model-server check on the default protocol, so lazily imported paths count too."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.probe.fakes import FakeModelServer
from tests.probe.test_probe_cli import LISTENING, ProbeProcess, child_env, make_ready, status_of, write_config

pytestmark = pytest.mark.timeout(60)

# Top-level packages the idle sidecar has no use for.
FORBIDDEN = (
    "numpy",
    "grpc",
    "google",  # protobuf
    "torch",
    "onnxruntime",
    "tensorrt",
    "kubernetes",
    "uvloop",
    "httptools",  # the lean HTTP/1.1 client of the timed requests (protocols/_http1.py)
)


async def test_probe_process_imports_no_heavy_library(tmp_path: Path, model_server: FakeModelServer) -> None:
    config = write_config(tmp_path, model_server.url)
    make_ready(tmp_path / "state")
    # -X importtime lists every module the probe's interpreter imports, on stderr.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", "-c", "from warmgate.cli import main; main()",
        "probe", "-c", str(config), "--host", "127.0.0.1", "--port", "0", "--shutdown-delay", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
    )  # fmt: skip
    child = ProbeProcess(process)
    try:
        port = int((await child.expect(LISTENING)).group(1))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for path in ("/startupz", "/readyz", "/livez", "/metrics"):
                assert await status_of(session, base + path) == 200, path
        process.send_signal(signal.SIGTERM)
        assert await child.wait() == 0, "\n".join(child.output)
    finally:
        child.kill()
    imported = {line.split("|")[-1].strip() for line in child.output if line.startswith("import time:")}
    # The check must have seen the probe's own code and the protocol it checks with.
    assert {"warmgate.probe.server", "warmgate.protocols.registry", "aiohttp"} <= imported, sorted(imported)
    leaked = sorted(name for name in imported if name.split(".")[0] in FORBIDDEN)
    assert not leaked, f"the probe imported {leaked}"
