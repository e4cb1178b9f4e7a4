"""The probe's own server check against a gRPC-only model server (protocol oip-grpc): ready, not
ready, down, through the probe's real app and a real grpc.aio server on a loopback port; and
`warmgate probe` as a process over it, which answers and then exits cleanly on TERM."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import full_report, make_config
from warmgate.grpcapi import open_inference_grpc_pb2 as pb
from warmgate.grpcapi import open_inference_grpc_pb2_grpc as pb_grpc
from warmgate.state import Phase, StateWriter

pytestmark = pytest.mark.timeout(30)

LISTENING = re.compile(r"probe listening on http://127\.0\.0\.1:(\d+)")


@dataclass
class GrpcHealth(pb_grpc.GRPCInferenceServiceServicer):
    """The readiness surface of a gRPC-only OIP server, whose answers the test controls."""

    server_ready: bool = True
    model_ready: bool = True
    calls: int = 0

    async def ServerLive(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return pb.ServerReadyResponse(ready=self.server_ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if request.name != "demo":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Model {request.name} not found")
        return pb.ModelReadyResponse(ready=self.model_ready)


@dataclass
class Running:
    servicer: GrpcHealth
    health: health.aio.HealthServicer
    server: grpc.aio.Server
    url: str


@pytest.fixture
async def grpc_only() -> AsyncIterator[Running]:
    servicer, health_servicer = GrpcHealth(), health.aio.HealthServicer()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Running(servicer, health_servicer, server, f"grpc://127.0.0.1:{port}")
    await server.stop(0)


def grpc_config(state_dir: Path, url: str, **server: Any) -> Any:
    config = make_config(state_dir, url, live_failures=1)
    return config.model_copy(
        update={"server": config.server.model_copy(update={"protocol": "oip-grpc", **server})}
    )


def make_ready(writer: StateWriter) -> None:
    writer.set_phase(Phase.LOAD_TESTING, "load test")
    writer.write_ready(full_report(writer.instance_id))
    writer.set_phase(Phase.READY, "all checks passed")


async def get(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    return response.status, await response.json()


async def test_ready_not_ready_and_down(
    grpc_only: Running, state_dir: Path, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(grpc_config(state_dir, grpc_only.url))
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (200, "ready")
    assert (await get(client, "/livez"))[1]["code"] == "alive"
    assert grpc_only.servicer.calls > 0

    grpc_only.servicer.model_ready = False  # the model was unloaded
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "server-unhealthy")
    assert body["reason"] == f"model server not ready: {grpc_only.url} ModelReady(demo): not ready"

    grpc_only.servicer.model_ready = True
    assert (await get(client, "/readyz"))[0] == 200
    await grpc_only.server.stop(0)  # down
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "server-unhealthy")
    assert body["reason"].startswith(f"model server not ready: {grpc_only.url} ServerReady: UNAVAILABLE: ")
    status, body = await get(client, "/livez")
    assert (status, body["code"]) == (503, "server-dead")
    assert f"{grpc_only.url} ServerLive: UNAVAILABLE: " in body["reason"]


async def test_the_standard_health_service_when_configured(
    grpc_only: Running, state_dir: Path, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    await grpc_only.health.set("demo", health_pb2.HealthCheckResponse.NOT_SERVING)
    grpc_only.servicer.model_ready = False  # not asked: the health service judges
    _, client = await make_probe(grpc_config(state_dir, grpc_only.url, grpc_health_service="demo"))
    status, body = await get(client, "/readyz")
    assert (status, body["reason"]) == (
        503,
        f"model server not ready: {grpc_only.url} grpc.health.v1.Health/Check('demo'): NOT_SERVING",
    )
    await grpc_only.health.set("demo", health_pb2.HealthCheckResponse.SERVING)
    assert (await get(client, "/readyz"))[0] == 200


async def listening_port(stderr: asyncio.StreamReader) -> int:
    lines: list[str] = []
    while not (match := LISTENING.search(line := (await stderr.readline()).decode())):
        assert line, "".join(lines)  # exited before listening
        lines.append(line)
    return int(match.group(1))


async def test_warmgate_probe_against_a_grpc_only_server(grpc_only: Running, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    writer = StateWriter(state_dir, instance_id="current-instance")
    writer.prepare()
    make_ready(writer)
    path = tmp_path / "warmup.yaml"
    document = {
        "state_dir": str(state_dir),
        "server": {"url": grpc_only.url, "protocol": "oip-grpc", "model": "demo", "command": ["unused"]},
        "probe": {"check_cache_s": 0},
    }
    path.write_text(yaml.safe_dump(document))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "warmgate", "probe", "-c", str(path), "--host", "127.0.0.1", "--port", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        port = await asyncio.wait_for(listening_port(process.stderr), 20)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/readyz") as response,
        ):
            assert response.status == 200, await response.text()
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stderr.read(), 20)
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        writer.close()
    assert "Traceback" not in rest.decode() and "Unclosed" not in rest.decode(), rest.decode()
