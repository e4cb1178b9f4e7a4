"""The readiness-gate pod condition, against a loopback fake of the Kubernetes API
(tests/support/fake_kube.py, served on the test's event loop).

Bodies are validated by the fake against the real Pod schema (kubernetes-validate, strict); the
official client runs for real, in the gate's worker thread, over HTTP or TLS.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes.client import Configuration

from tests.probe.fakes import FakeModelServer, full_report, poll_until, probe_parts
from tests.support import fake_kube
from tests.support.fake_kube import JSON_PATCH, MERGE_PATCH, FakeKube, failure, serve_on_loop, validate_object
from warmgate.config import ConfigError, validate_config
from warmgate.probe.evaluator import Verdict
from warmgate.probe.readiness_gate import (
    MESSAGE_LIMIT,
    STRATEGIC_MERGE_PATCH,
    Condition,
    PodConditionPatcher,
    PodRef,
    ReadinessGate,
    build_gate,
    condition_patch,
)
from warmgate.probe.server import serve
from warmgate.state import Phase, StateWriter

pytestmark = pytest.mark.timeout(60)

WARM = Condition(True, "Warm", "ready marker present and model server healthy")
COLD = Condition(False, "Draining", "instance is draining")
NS = "ml"
# The pod the gate patches: as the chart renders it, before the sidecar first sets the condition.
POD = fake_kube.pod("blue", 0, warm=None, namespace=NS)
POD_NAME = POD["metadata"]["name"]
CONDITION_TYPE = "warmgate.dev/warm"
STATUS_PATH = f"/api/v1/namespaces/{NS}/pods/{POD_NAME}/status"


@dataclass
class Api:
    fake: FakeKube
    url: str

    @property
    def token(self) -> str:
        return str(self.fake.token)

    def pod(self) -> dict[str, Any]:
        return self.fake.get("Pod", NS, POD_NAME)

    def condition(self) -> dict[str, Any] | None:
        return self.fake.pod_condition(NS, POD_NAME, CONDITION_TYPE)


def cluster() -> FakeKube:
    fake = FakeKube()
    fake.add(POD)
    return fake


@pytest.fixture
async def kube(aiohttp_server: Any) -> Api:
    fake = cluster()
    return Api(fake, await serve_on_loop(aiohttp_server, fake))


def configuration_for(api: Api, token: str | None = None) -> Configuration:
    configuration = Configuration()
    configuration.host = api.url
    configuration.api_key["BearerToken"] = token or api.token
    configuration.api_key_prefix["BearerToken"] = "Bearer"
    return configuration


def patcher_for(api: Api, token: str | None = None) -> PodConditionPatcher:
    return PodConditionPatcher(lambda: configuration_for(api, token), PodRef(NS, POD_NAME), CONDITION_TYPE)


def gate_for(api: Api, token: str | None = None) -> ReadinessGate:
    patcher = patcher_for(api, token)
    # Shrunk backoff: retries are tested by counting them, not by waiting.
    return ReadinessGate(
        patcher,
        condition_type=CONDITION_TYPE,
        backoff_initial_s=0.001,
        backoff_max_s=0.01,
        close=patcher.close,
    )


async def test_patch_sets_the_condition_on_a_valid_pod(kube: Api) -> None:
    kubelet_conditions = kube.pod()["status"]["conditions"]
    patcher = patcher_for(kube)
    try:
        # The client is synchronous: in a thread, as the gate runs it.
        await asyncio.to_thread(patcher, WARM)
        request = kube.fake.requests[-1]
        assert request.path == STATUS_PATH
        assert request.content_type == STRATEGIC_MERGE_PATCH
        assert request.authorization == f"Bearer {kube.token}"
        condition = kube.condition()
        assert condition is not None
        assert (condition["status"], condition["reason"]) == ("True", "Warm")
        assert condition["message"] == WARM.message

        await asyncio.to_thread(patcher, COLD)
        condition = kube.condition()
        assert condition is not None and (condition["status"], condition["reason"]) == ("False", "Draining")
        # Merged by type: the kubelet's own conditions are untouched.
        conditions = kube.pod()["status"]["conditions"]
        assert conditions[:-1] == kubelet_conditions
        assert conditions[-1]["type"] == CONDITION_TYPE
        validate_object(kube.pod())
    finally:
        patcher.close()


def test_patch_body_is_a_valid_pod_status() -> None:
    now = datetime.datetime(2024, 5, 1, 12, 30, 5, 123456, tzinfo=datetime.timezone.utc)
    body = condition_patch("warmgate.dev/warm", WARM, now)
    assert body == {
        "status": {
            "conditions": [
                {
                    "type": "warmgate.dev/warm",
                    "status": "True",
                    "reason": "Warm",
                    "message": WARM.message,
                    "lastTransitionTime": "2024-05-01T12:30:05Z",
                }
            ]
        }
    }
    pod = fake_kube.pod("blue", 0, warm=None)
    pod["status"]["conditions"].extend(body["status"]["conditions"])
    validate_object(pod)


async def test_the_fake_refuses_what_the_api_server_refuses(kube: Api) -> None:
    """The fake is no rubber stamp: schema violations, bad times, unknown media types, unknown
    pods and missing tokens fail."""
    url = kube.url + STATUS_PATH
    auth = {"Authorization": f"Bearer {kube.token}"}

    async def patch(session: aiohttp.ClientSession, content_type: str, body: Any, target: str = url) -> int:
        async with session.patch(
            target, json=body, headers={**auth, "Content-Type": content_type}
        ) as response:
            return response.status

    condition = {"type": CONDITION_TYPE, "status": "True", "lastTransitionTime": "2024-05-01T12:00:00Z"}
    async with aiohttp.ClientSession() as session:
        assert (
            await patch(
                session, STRATEGIC_MERGE_PATCH, {"status": {"conditions": [{**condition, "bogus": 1}]}}
            )
            == 422
        )
        bad_time = {**condition, "lastTransitionTime": "yesterday"}
        assert await patch(session, STRATEGIC_MERGE_PATCH, {"status": {"conditions": [bad_time]}}) == 422
        assert await patch(session, "application/json", {"status": {}}) == 415
        # The other two real patch types work on the same path.
        assert await patch(session, MERGE_PATCH, {"status": {"phase": "Running"}}) == 200
        add = [{"op": "add", "path": "/status/conditions/-", "value": condition}]
        assert await patch(session, JSON_PATCH, add) == 200
        assert kube.condition() == condition
        async with session.patch(url, json={}, headers={"Content-Type": MERGE_PATCH}) as response:
            assert response.status == 401
        assert await patch(session, MERGE_PATCH, {}, url.replace(POD_NAME, "no-such-pod")) == 404


async def test_api_errors_are_retried_with_backoff(kube: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="warmgate.probe.gate")
    kube.fake.failures[("PATCH", STATUS_PATH)] = [failure(code) for code in (500, 429, 503, 409)]
    gate = gate_for(kube)
    gate.start()
    try:
        gate.set_desired(WARM)
        assert await gate.settle(20)
        assert (gate.attempts, gate.failures) == (5, 4)
        assert len(kube.fake.requests) == 5
        assert kube.condition()["status"] == "True"  # type: ignore[index]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "HTTP 500" in warnings[0], warnings
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any("after 4 failed attempts" in line for line in infos), infos
    finally:
        await gate.close()


async def test_forbidden_is_retried_without_crashing_and_names_the_rbac_fix(
    kube: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="warmgate.probe.gate")
    kube.fake.failures[("PATCH", STATUS_PATH)] = failure(403, f'pods "{POD_NAME}" is forbidden')
    gate = gate_for(kube)
    gate.start()
    try:
        gate.set_desired(WARM)

        async def failures() -> int:
            return gate.failures

        await poll_until(failures, lambda n: n >= 3, what="three failed attempts")
        assert gate.applied is None
        assert any("pods/status" in r.getMessage() for r in caplog.records)
        # A new desired status is tried at once, and lands when the API lets it.
        gate.set_desired(COLD)
        del kube.fake.failures[("PATCH", STATUS_PATH)]
        assert await gate.settle(20)
        assert gate.applied == COLD
        assert kube.condition()["status"] == "False"  # type: ignore[index]
    finally:
        await gate.close()


async def test_wrong_token_is_reported_not_raised(kube: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="warmgate.probe.gate")
    gate = gate_for(kube, token="wrong")
    gate.start()
    try:
        gate.set_desired(WARM)
        assert not await gate.settle(0.2)
        assert any("HTTP 401" in r.getMessage() for r in caplog.records)
    finally:
        await gate.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_api_is_retried() -> None:
    gate = gate_for(Api(cluster(), f"http://127.0.0.1:{closed_port()}"))
    gate.start()
    try:
        gate.set_desired(WARM)

        async def failures() -> int:
            return gate.failures

        await poll_until(failures, lambda n: n >= 2, what="two failed attempts")
        assert gate.applied is None
    finally:
        await gate.close()


async def test_only_status_changes_reach_the_api(kube: Api) -> None:
    gate = gate_for(kube)
    gate.start()
    try:
        gate.set_desired(WARM)
        assert await gate.settle(20)
        gate.set_desired(Condition(True, "Warm", "another message"))
        gate.set_desired(WARM)
        assert await gate.settle(1)
        gate.set_desired(COLD)
        assert await gate.settle(20)
        assert len(kube.fake.requests) == 2
    finally:
        await gate.close()


def test_condition_from_verdict() -> None:
    assert Condition.from_verdict(Verdict(True, "ready", "fine")) == Condition(True, "Warm", "fine")
    assert Condition.from_verdict(Verdict(False, "draining", "bye")).reason == "Draining"
    assert Condition.from_verdict(Verdict(False, "stale-marker", "old")).reason == "NotWarm"
    long = Condition.from_verdict(Verdict(False, "not-ready", "x" * 1000))
    assert len(long.message) == MESSAGE_LIMIT and long.message.endswith("...")


def test_pod_must_be_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="POD_NAME"):
        build_gate(
            "warmgate.dev/warm",
            {"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"},
            service_account_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        build_gate("warmgate.dev/warm", {"POD_NAME": "p", "POD_NAMESPACE": "n"}, service_account_dir=tmp_path)
    # The namespace may come from the service account instead of the downward API.
    (tmp_path / "namespace").write_text("from-sa\n")
    assert PodRef.from_environment({"POD_NAME": "p"}, tmp_path) == PodRef("from-sa", "p")


# ---- in-cluster configuration over TLS, end to end through `serve` --------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the fake API server's certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "ca.crt", directory / "tls.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_kube(aiohttp_server: Any, tls_files: tuple[Path, Path]) -> Api:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    fake = cluster()
    return Api(fake, await serve_on_loop(aiohttp_server, fake, ssl=context))


def service_account(directory: Path, api: Api, ca: Path) -> Path:
    directory.mkdir()
    (directory / "token").write_text(api.token)
    (directory / "ca.crt").write_bytes(ca.read_bytes())
    return directory


async def test_in_cluster_gate_follows_readiness_through_serve(
    tmp_path: Path,
    tls_kube: Api,
    tls_files: tuple[Path, Path],
    model_server: FakeModelServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    accounts = service_account(tmp_path / "sa", tls_kube, tls_files[0])
    port = tls_kube.url.rsplit(":", 1)[1]
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": port,
        "POD_NAME": POD_NAME,
        "POD_NAMESPACE": NS,
    }
    state_dir = tmp_path / "state"
    config = validate_config(
        {
            "state_dir": str(state_dir),
            "server": {"url": model_server.url, "command": ["unused"]},
            "probe": {"check_cache_s": 0, "readiness_gate": {"enabled": True}},
        },
        "test",
        {},
    )
    writer = StateWriter(state_dir, instance_id="gate-instance")
    writer.prepare()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    task = asyncio.create_task(
        serve(
            *probe_parts(config),
            host="127.0.0.1",
            port=0,
            shutdown_delay_s=0.05,
            environ=environ,
            signals=signals,
            service_account_dir=accounts,
            gate_interval_s=0.01,
        )
    )

    async def condition() -> str | None:
        found = tls_kube.condition()
        return None if found is None else f"{found['status']}/{found.get('reason')}"

    try:
        # Not warm yet: the condition is set False at once (a restarted sidecar may find it True).
        assert (
            await poll_until(condition, lambda c: c == "False/Warming", what="False/Warming")
            == "False/Warming"
        )
        writer.write_ready(full_report(writer.instance_id))
        writer.set_phase(Phase.READY, "ready")
        await poll_until(condition, lambda c: c == "True/Warm", what="True/Warm")
        writer.set_phase(Phase.DRAINING, "draining")
        await poll_until(condition, lambda c: c == "False/Draining", what="False/Draining")
        signals.put_nowait(signal.SIGTERM)
        assert await asyncio.wait_for(task, 20) == 0
    finally:
        if not task.done():
            task.cancel()
    assert all(r.content_type == STRATEGIC_MERGE_PATCH for r in tls_kube.fake.requests)
    validate_object(tls_kube.pod())
