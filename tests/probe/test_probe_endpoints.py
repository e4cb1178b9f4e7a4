"""Every probe endpoint in every state, through a real server on a loopback port."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import FakeModelServer, full_report, make_config, poll_until
from warmgate.state import (
    READY_FILE,
    STATUS_FILE,
    Phase,
    Progress,
    StateWriter,
    atomic_write_json,
    to_json_dict,
)

pytestmark = pytest.mark.timeout(30)


async def get(client: Any, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(path)
    return response.status, await response.json()


def make_ready(writer: StateWriter) -> None:
    writer.set_phase(Phase.LOAD_TESTING, "load test")
    writer.write_ready(full_report(writer.instance_id))
    writer.set_phase(Phase.READY, "all checks passed")


async def test_no_state_directory_yet(config: Any, make_probe: ProbeFactory) -> None:
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert status == 503
        assert body["code"] == "no-state"
        assert "does not exist yet" in body["reason"]
    # Liveness is not judged before the entrypoint has written anything.
    status, body = await get(client, "/livez")
    assert (status, body["code"]) == (200, "not-judged")
    # The sidecar's own health never waits for the warmup.
    assert (await client.get("/healthz")).status == 200


async def test_starting(config: Any, writer: StateWriter, make_probe: ProbeFactory) -> None:
    _, client = await make_probe(config)
    status, body = await get(client, "/startupz")
    assert status == 503
    assert body["phase"] == "starting"
    assert body["instance_id"] == "current-instance"
    assert body["code"] == "not-ready"
    assert "no ready marker yet" in body["reason"]
    assert (await get(client, "/readyz"))[0] == 503


async def test_warming_reports_phase_and_progress(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    writer.set_phase(Phase.WARMING, "warming bs4", progress=Progress(done=3, total=8, detail="bs4"))
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert status == 503
        assert body["phase"] == "warming"
        assert body["progress"] == {"done": 3, "total": 8, "detail": "bs4"}
        assert body["message"] == "warming bs4"
        assert "(3/8)" in body["reason"]
    # Not ready means no need to ask the model server.
    assert model_server.requests["/v2/health/ready"] == 0


async def test_ready(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    status, body = await get(client, "/startupz")
    assert (status, body["code"]) == (200, "started")
    status, body = await get(client, "/readyz")
    assert (status, body["code"], body["phase"]) == (200, "ready", "ready")
    status, body = await get(client, "/livez")
    assert (status, body["code"]) == (200, "alive")
    # Readiness asks both Open Inference Protocol endpoints, liveness the live one.
    assert model_server.requests["/v2/health/ready"] == 1
    assert model_server.requests["/v2/models/demo/ready"] == 1
    assert model_server.requests["/v2/health/live"] == 1
    response = await client.get("/readyz")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "application/json"


async def test_failed(config: Any, writer: StateWriter, make_probe: ProbeFactory) -> None:
    writer.set_phase(Phase.FAILED, "gate failed: p95 0.2s > 0.1s")
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert (status, body["code"]) == (503, "failed")
        assert "gate failed: p95 0.2s > 0.1s" in body["reason"]


async def test_draining_fails_readiness_before_the_marker_goes(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    assert (await get(client, "/readyz"))[0] == 200
    # The entrypoint announces the drain first and removes the marker second.
    writer.set_phase(Phase.DRAINING, "quiet period 5s")
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "draining")
    status, body = await get(client, "/livez")
    assert (status, body["code"]) == (200, "not-judged")
    writer.clear_ready()
    assert (await get(client, "/readyz"))[1]["code"] == "draining"
    assert (await get(client, "/startupz"))[0] == 503


async def test_stale_marker_from_an_earlier_run_does_not_count(
    config: Any, state_dir: Path, make_probe: ProbeFactory
) -> None:
    earlier = StateWriter(state_dir, instance_id="earlier-run")
    earlier.prepare()
    make_ready(earlier)
    # The new run has written its status, but the old marker is still there.
    current = StateWriter(state_dir, instance_id="current-run")
    atomic_write_json(current.status_path, to_json_dict(current.status))
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert (status, body["code"]) == (503, "stale-marker")
        assert "earlier-run" in body["reason"] and "current-run" in body["reason"]


async def test_marker_left_by_a_killed_entrypoint_does_not_count(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    # A whole-container kill leaves status and marker agreeing: only the instance lock tells.
    make_ready(writer)
    _, client = await make_probe(config)
    assert (await get(client, "/startupz"))[0] == 200
    writer.close()  # the kernel drops the lock when the entrypoint dies
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert (status, body["code"]) == (503, "stale-marker")
        assert body["reason"] == (
            "the entrypoint that wrote the ready marker (instance current-instance) is gone"
        )


async def test_status_ready_without_marker_is_not_ready(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    writer.set_phase(Phase.READY, "ready")
    _, client = await make_probe(config)
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "no-marker")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"instance_id": "current-instance", "phase": "ready"',  # half-written
        b"\x00\xff\xfe garbage",
        b'["a", "list"]',
        b'{"instance_id": "x", "pid": 1, "phase": "no-such-phase", "started_at": 0,'
        b' "phase_started_at": 0, "updated_at": 0}',
        b"[" * 100_000,
    ],
    ids=["empty", "half-written", "binary", "list", "bad-phase", "deep-nesting"],
)
async def test_corrupt_status_is_not_ready_never_a_500(
    config: Any, state_dir: Path, make_probe: ProbeFactory, content: bytes
) -> None:
    state_dir.mkdir()
    (state_dir / STATUS_FILE).write_bytes(content)
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz"):
        status, body = await get(client, path)
        assert (status, body["code"]) == (503, "no-state")
        assert "status.json" in body["reason"]
    assert (await client.get("/metrics")).status == 200


async def test_status_path_that_is_a_directory(
    config: Any, state_dir: Path, make_probe: ProbeFactory
) -> None:
    (state_dir / STATUS_FILE).mkdir(parents=True)
    _, client = await make_probe(config)
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "no-state")


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"instance_id": "current-instance"}'])
async def test_corrupt_marker_is_not_ready(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, content: bytes
) -> None:
    writer.set_phase(Phase.READY, "ready")
    (writer.state_dir / READY_FILE).write_bytes(content)
    _, client = await make_probe(config)
    status, body = await get(client, "/readyz")
    assert status == 503
    assert "ready marker unusable" in body["reason"]


async def test_marker_with_fields_from_a_newer_entrypoint_still_counts(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    document = to_json_dict(full_report(writer.instance_id))
    document["concurrency_check"] = {"mismatches": 0}
    document["shapes"][0]["something_new"] = [1, 2, 3]
    atomic_write_json(writer.ready_path, document)
    writer.set_phase(Phase.READY, "ready")
    _, client = await make_probe(config)
    assert (await get(client, "/readyz"))[0] == 200


async def test_model_server_unhealthy_after_ready(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    assert (await get(client, "/readyz"))[0] == 200
    model_server.ready_status = 503
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "server-unhealthy")
    assert "HTTP 503" in body["reason"]
    # Startup stays passed: the marker is there; readiness is what flips.
    assert (await get(client, "/startupz"))[0] == 200


async def test_liveness_tolerates_brief_failures(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)  # live_failures: 3, no caching
    model_server.live_status = 500
    codes = [(await get(client, "/livez")) for _ in range(3)]
    assert [(status, body["code"]) for status, body in codes] == [
        (200, "alive-failing"),
        (200, "alive-failing"),
        (503, "server-dead"),
    ]
    assert "3 consecutive failed checks" in codes[2][1]["reason"]
    model_server.live_status = 200
    assert (await get(client, "/livez"))[0] == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_model_server_down_after_ready(
    state_dir: Path, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    config = make_config(state_dir, f"http://127.0.0.1:{free_port()}", live_failures=1)
    _, client = await make_probe(config)
    status, body = await get(client, "/readyz")
    assert (status, body["code"]) == (503, "server-unhealthy")
    assert "cannot connect" in body["reason"]
    status, body = await get(client, "/livez")
    assert (status, body["code"]) == (503, "server-dead")


async def test_model_server_slower_than_the_check_timeout(
    state_dir: Path, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    model_server.hold = asyncio.Event()  # never answers until the test ends
    config = make_config(state_dir, model_server.url, check_timeout_s=0.05)
    _, client = await make_probe(config)
    started = time.monotonic()
    status, body = await get(client, "/readyz")
    elapsed = time.monotonic() - started
    assert (status, body["code"]) == (503, "server-unhealthy")
    assert "no answer within 0.05s" in body["reason"]
    # Answered near the check timeout, far below the kubelet's 1 s.
    assert elapsed < 0.9


async def test_concurrent_probes_share_one_server_check(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    probe, client = await make_probe(config)  # no caching: only single flight can merge checks
    check = probe.evaluator.ready_check
    shared_result = check.result
    arrived = 0

    async def counting_result() -> Any:
        nonlocal arrived
        arrived += 1
        return await shared_result()

    check.result = counting_result  # type: ignore[method-assign]
    model_server.hold = asyncio.Event()
    requests = [asyncio.create_task(client.get("/readyz")) for _ in range(50)]

    async def state() -> tuple[int, int]:
        return arrived, model_server.in_flight

    # Every probe is waiting on the check, and the check holds one request per endpoint.
    await poll_until(state, lambda s: s == (50, 2), what="all probes to wait on one check")
    model_server.hold.set()
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 50
    assert probe.evaluator.ready_check.runs == 1
    assert model_server.requests["/v2/health/ready"] == 1
    assert model_server.requests["/v2/models/demo/ready"] == 1


async def test_cached_result_is_reused_within_the_interval(
    state_dir: Path, writer: StateWriter, make_probe: ProbeFactory, model_server: FakeModelServer
) -> None:
    make_ready(writer)
    now = [1000.0]
    config = make_config(state_dir, model_server.url, check_cache_s=1.0)
    _, client = await make_probe(config, clock=lambda: now[0])
    for _ in range(5):
        assert (await get(client, "/readyz"))[0] == 200
    assert model_server.requests["/v2/health/ready"] == 1
    now[0] += 1.0
    assert (await get(client, "/readyz"))[0] == 200
    assert model_server.requests["/v2/health/ready"] == 2


async def test_shutting_down_answers_503_everywhere(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    probe, client = await make_probe(config)
    assert (await get(client, "/readyz"))[0] == 200
    probe.evaluator.begin_shutdown()
    for path in ("/startupz", "/readyz", "/livez", "/healthz"):
        status, body = await get(client, path)
        assert status == 503, path
        assert body["reason"] == "probe is shutting down"
    assert (await client.get("/metrics")).status == 503


async def test_logs_one_line_per_state_change_not_per_probe(
    config: Any, writer: StateWriter, make_probe: ProbeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="warmgate.probe")
    _, client = await make_probe(config)
    for _ in range(10):
        await client.get("/readyz")
    make_ready(writer)
    for _ in range(10):
        await client.get("/readyz")
    readiness_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("readiness:")]
    assert len(readiness_lines) == 2, readiness_lines
    assert "FAIL" in readiness_lines[0] and "pass" in readiness_lines[1]
    phase_lines = [
        r.getMessage() for r in caplog.records if "phase" in r.getMessage() and "instance" in r.getMessage()
    ]
    assert len(phase_lines) == 2, phase_lines  # starting, then ready


async def test_unknown_paths_are_404_and_counted_as_other(config: Any, make_probe: ProbeFactory) -> None:
    probe, client = await make_probe(config)
    assert (await client.get("/nope")).status == 404
    assert (
        probe.registry.get_sample_value("warmgate_probe_requests_total", {"endpoint": "other", "code": "404"})
        == 1
    )
