"""`warmgate run --once` with protocol oip-grpc as a real process over the fake gRPC server process:
the start-up mistakes of issue 13 item 5 end the run within seconds (exit 81, server never
healthy) with one line naming what is wrong, and a model that loads late is waited for.

    server.url at the server's HTTP port       -> "answers HTTP/1.1, not gRPC"
    grpc:// at a TLS port, grpcs:// at a plain -> "expects TLS ... use grpcs://" / "... use grpc://"
    an unknown model                           -> "server.model 'x' is not served: ... NOT_FOUND"
    nothing on the configured port             -> "the server ... is ready at grpc://...:<its port>"
    protocol oip (HTTP) at the gRPC port       -> "speaks HTTP/2 (gRPC?), not HTTP/1.1"
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env
from tests.support.tlscert import self_signed
from warmgate import exitcodes
from warmgate.config import ServerConfig
from warmgate.entrypoint.diagnosis import SNIFF_MATCH_CACHE_S, StartupDiagnosis
from warmgate.protocols import make_adapter

pytestmark = pytest.mark.timeout(90)

FAKE_GRPC_SERVER = str(Path(__file__).parent / "engine" / "fakegrpcserver.py")
# The mistake must be named within seconds of the server listening (the wait itself allows 60 s).
NAMED_WITHIN_S = 8.0
NOT_USABLE = re.compile(r"server not usable after (\d+\.\d)s: (.*)$", re.M)


def run_once(tmp_path: Path, url: str, server_args: list[str], **server: Any) -> tuple[Proc, Path]:
    state_dir = tmp_path / "state"
    config = {
        "server": {
            "url": url,
            "protocol": "oip-grpc",
            "model": "demo",
            "start_timeout_s": 60,
            "unknown_model_grace_s": 1,
            **server,
        },
        "shapes": [{"name": "bs2", "batch_size": 2, "inputs": {"input": {"dims": [4]}}, "count": 2}],
        "load_test": {"duration_s": 0.3, "concurrency": 2},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0.1, "grace_period_s": 5},
        # These tests are about starting; warmth over gRPC is test_grpc_engine.py's.
        "gate": {"max_first_to_steady_ratio": None},
    }
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [*WARMGATE, "run", "--once", "-c", str(path), "--", sys.executable, FAKE_GRPC_SERVER, *server_args]
    return Proc(argv, env=warmgate_env()), state_dir


def fails_fast_with(proc: Proc, state_dir: Path) -> str:
    """The one-line reason of a run that ended on a start-up mistake (exit 81, within seconds)."""
    try:
        assert proc.wait(60) == exitcodes.SERVER_NEVER_HEALTHY, proc.output
    finally:
        proc.close()
    assert "Traceback" not in proc.output
    match = NOT_USABLE.search(proc.output)
    assert match, proc.output
    assert float(match.group(1)) < NAMED_WITHIN_S, proc.output
    status = json.loads((state_dir / "status.json").read_text())
    assert status["phase"] == "failed" and match.group(2) in status["message"]
    assert not (state_dir / "ready.json").exists()
    return match.group(2)


def test_server_url_at_the_servers_http_port(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    url = f"grpc://127.0.0.1:{http_port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(grpc_port), "--http-port", str(http_port)])
    reason = fails_fast_with(proc, state_dir)
    assert reason.startswith(
        f"{url} answers HTTP/1.1, not gRPC: is server.url the gRPC port? (the health check said: "
        f"{url} ServerReady: UNAVAILABLE: the port answers HTTP/1.1, not gRPC"
    ), reason


def test_grpc_at_a_tls_port(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(port), "--tls", str(cert), str(key)])
    reason = fails_fast_with(proc, state_dir)
    assert reason.startswith(f"{url} expects TLS, but server.url is plaintext: use grpcs:// ("), reason


def test_grpcs_at_a_plaintext_port(tmp_path: Path) -> None:
    port = free_port()
    url = f"grpcs://127.0.0.1:{port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(port)])
    reason = fails_fast_with(proc, state_dir)
    assert reason.startswith(
        f"{url} speaks plaintext HTTP/2 (gRPC without TLS), not TLS: use grpc:// (the health check said: "
        f"{url} ServerReady: UNAVAILABLE: the port does not speak TLS: use grpc:// (Tls handshake failed"
    ), reason


def test_an_unknown_model(tmp_path: Path) -> None:
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(port), "--model", "resnet"], model="demo")
    reason = fails_fast_with(proc, state_dir)
    assert (
        reason
        == f"server.model 'demo' is not served: {url} ModelReady(demo): NOT_FOUND: Model demo not found"
    )


def test_nothing_on_the_configured_port_but_the_server_is_ready_on_another(tmp_path: Path) -> None:
    configured, actual = free_port(), free_port()
    url = f"grpc://127.0.0.1:{configured}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(actual)])
    reason = fails_fast_with(proc, state_dir)
    assert reason.startswith(f"nothing listens on port {configured} of server.url {url}, but the server"), (
        reason
    )
    assert reason.endswith(f"is ready at grpc://127.0.0.1:{actual}: fix server.url or the server's port"), (
        reason
    )


def test_protocol_oip_at_the_grpc_port(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(port)], protocol="oip")
    reason = fails_fast_with(proc, state_dir)
    assert reason.startswith(
        f"{url} speaks HTTP/2 (gRPC?), not HTTP/1.1: is server.url the HTTP port "
        "(or is the server's protocol oip-grpc)? (the health check said: GET "
    ), reason


def test_a_model_that_loads_late_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    url = f"grpc://127.0.0.1:{port}"
    proc, state_dir = run_once(tmp_path, url, ["--port", str(port), "--load-after", "1.5"])
    try:
        assert proc.wait(60) == exitcodes.OK, proc.output
    finally:
        proc.close()
    healthy = re.search(r"server healthy after (\d+\.\d+)s", proc.output)
    assert healthy and float(healthy.group(1)) >= 1.5, proc.output
    assert (state_dir / "ready.json").exists()


async def test_a_port_that_speaks_the_right_protocol_is_not_asked_again_for_a_while(
    aiohttp_server: Any,
) -> None:
    # A sniff costs the server a connection and a log line: during a long model load it is
    # repeated every SNIFF_MATCH_CACHE_S, not at every diagnosis.
    asked: list[str] = []

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS":  # the sniff (the diagnosis also asks the OIP endpoints)
            asked.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    server = await aiohttp_server(app)
    config = ServerConfig.model_validate({"url": f"http://127.0.0.1:{server.port}", "protocol": "oip"})
    now = [0.0]
    async with aiohttp.ClientSession() as session:
        diagnosis = StartupDiagnosis(
            config, make_adapter(config), session, os.getpid(), None, clock=lambda: now[0]
        )
        for _ in range(3):
            assert await diagnosis("GET /v2/health/ready: HTTP 503 loading", 1.0) is None
        assert asked == ["*"]
        now[0] += SNIFF_MATCH_CACHE_S
        assert await diagnosis("GET /v2/health/ready: HTTP 503 loading", 1.0) is None
        assert asked == ["*", "*"]
