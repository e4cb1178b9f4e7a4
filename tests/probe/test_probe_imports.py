"""The sidecar's import set: `warmgate probe` validates its config and then execs a lean serving
process (probe/launch.py) that reads two small JSON files and serves the probes. That process must
not load the config models, the HTTP client library, numerical or ML libraries, the gRPC stack or
the Kubernetes client: it is memory in every pod of the deployment. Checked on a real process that
served the probes and a scrape, with the model-server check on the default protocol, so lazily
imported paths count too."""

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

# Top-level packages the serving process has no use for.
FORBIDDEN = (
    "aiohttp",  # the probe serves and checks over its own HTTP/1.1 code (httptools)
    "yarl",
    "multidict",
    "pydantic",  # the config was validated before the exec; state files are read with msgspec
    "pydantic_core",
    "yaml",
    "numpy",
    "grpc",
    "google",  # protobuf
    "torch",
    "onnxruntime",
    "tensorrt",
    "kubernetes",
    "uvloop",
)
# warmgate's own modules that load the above, or validate the config.
FORBIDDEN_OWN = ("warmgate.config", "warmgate.protocols.base", "warmgate.protocols.registry")
# Each interpreter prints this header first: the exec starts a second one.
IMPORT_TIME_HEADER = "import time: self [us] | cumulative | imported package"


async def test_the_serving_process_imports_no_heavy_library(
    tmp_path: Path, model_server: FakeModelServer
) -> None:
    config = write_config(tmp_path, model_server.url)
    make_ready(tmp_path / "state")
    # PYTHONPROFILEIMPORTTIME (-X importtime) lists every module an interpreter imports, on stderr;
    # unlike the flag, the variable reaches the interpreter the exec starts.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from warmgate.cli import main; main()",
        "probe", "-c", str(config), "--host", "127.0.0.1", "--port", "0", "--shutdown-delay", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**child_env(), "PYTHONPROFILEIMPORTTIME": "1"},
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
    headers = [i for i, line in enumerate(child.output) if line.strip() == IMPORT_TIME_HEADER]
    assert len(headers) == 2, "expected the validating interpreter and the serving one"
    validating, serving = (
        {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
        for lines in (child.output[: headers[1]], child.output[headers[1] :])
    )
    # The check must have seen both: validation with the full config, serving with its own code.
    # (importtime lists what import statements load, not importlib.import_module: the protocol
    # modules the registry finds are not listed, what they import is.)
    assert {"warmgate.config", "warmgate.probe.planning", "pydantic", "aiohttp"} <= validating
    assert {"warmgate.probe.launch", "warmgate.probe.server", "httptools", "msgspec"} <= serving, sorted(
        serving
    )
    leaked = sorted(name for name in serving if name.split(".")[0] in FORBIDDEN or name in FORBIDDEN_OWN)
    assert not leaked, f"the probe's serving process imported {leaked}"
