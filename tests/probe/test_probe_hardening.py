"""The probe treats the state directory as untrusted and never echoes secrets or huge strings.

State files that would hang or exhaust the sidecar (FIFOs, symlinks to /dev/zero, huge files) are
tried against the real `warmgate probe` process: a hang there cannot freeze the test's own event
loop, and each answer is awaited with a deadline. Redaction and truncation use the app in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import FakeModelServer, full_report, make_config
from tests.probe.test_probe_cli import LISTENING, WARMGATE, ProbeProcess, child_env, write_config
from warmgate.probe.evaluator import FIELD_MAX_CHARS, MESSAGE_MAX_CHARS
from warmgate.state import READY_FILE, READY_MAX_BYTES, STATUS_FILE, STATUS_MAX_BYTES, Phase, StateWriter

pytestmark = pytest.mark.timeout(60)

# Every answer must come within this; a hang is the failure these tests look for.
ANSWER_DEADLINE_S = 5.0
# Without the size cap, reading /dev/zero grows until this address-space limit stops the child
# (MemoryError) instead of taking the test machine's memory. The probe itself needs ~200 MiB.
CHILD_ADDRESS_SPACE = 1 << 30
SECRET = "s3cret-pw"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


async def start_probe(config: Path) -> tuple[ProbeProcess, int]:
    process = await asyncio.create_subprocess_exec(
        *WARMGATE, "probe", "-c", str(config), "--host", "127.0.0.1", "--port", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
        preexec_fn=_limit_memory,
    )  # fmt: skip
    child = ProbeProcess(process)
    return child, int((await child.expect(LISTENING)).group(1))


@pytest.fixture
async def probe_process(tmp_path: Path, model_server: FakeModelServer) -> AsyncIterator[Callable[[], Any]]:
    """Starts `warmgate probe` on tmp_path/state (once the test has laid out the state)."""
    children: list[ProbeProcess] = []

    async def start() -> str:
        child, port = await start_probe(write_config(tmp_path, model_server.url))
        children.append(child)
        return f"http://127.0.0.1:{port}"

    yield start
    for child in children:
        child.kill()
        await child.wait()


async def get(base: str, path: str) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=ANSWER_DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(base + path) as response:
        return response.status, await response.read()


def current_instance(state_dir: Path, phase: Phase = Phase.READY) -> StateWriter:
    writer = StateWriter(state_dir, instance_id="current-instance")
    writer.prepare()
    writer.write_ready(full_report(writer.instance_id))
    writer.set_phase(phase, phase.value)
    return writer


def plant_fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def plant_dev_zero(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def plant_directory(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


def plant_huge(limit: int) -> Callable[[Path], None]:
    def plant(path: Path) -> None:
        # Sparse: costs no disk, and its size alone must refuse it.
        with path.open("r+b") as f:
            f.truncate(limit + 1)

    return plant


# (file, what is planted there, words the reason must contain, expected /startupz code)
BAD_FILES = [
    pytest.param(STATUS_FILE, plant_fifo, "status.json is a FIFO", "no-state", id="status-fifo"),
    pytest.param(READY_FILE, plant_fifo, "ready.json is a FIFO", "no-marker", id="ready-fifo"),
    pytest.param(
        STATUS_FILE, plant_dev_zero, "status.json is a symbolic link", "no-state", id="status-dev-zero"
    ),
    pytest.param(
        READY_FILE, plant_dev_zero, "ready.json is a symbolic link", "no-marker", id="ready-dev-zero"
    ),
    pytest.param(STATUS_FILE, plant_directory, "status.json is a directory", "no-state", id="status-dir"),
    pytest.param(
        STATUS_FILE, plant_huge(STATUS_MAX_BYTES), "status.json is too large", "no-state", id="status-huge"
    ),
    pytest.param(
        READY_FILE, plant_huge(READY_MAX_BYTES), "ready.json is too large", "no-marker", id="ready-huge"
    ),
]


@pytest.mark.parametrize(("name", "plant", "reason", "code"), BAD_FILES)
async def test_a_bad_state_file_is_a_prompt_503_with_its_reason(
    tmp_path: Path,
    probe_process: Callable[[], Any],
    name: str,
    plant: Callable[[Path], None],
    reason: str,
    code: str,
) -> None:
    state_dir = tmp_path / "state"
    writer = current_instance(state_dir)
    plant(state_dir / name)
    base = await probe_process()
    status, body = await get(base, "/startupz")
    answer = json.loads(body)
    assert (status, answer["code"]) == (503, code), answer
    assert reason in answer["reason"]
    status, body = await get(base, "/readyz")
    assert status == 503 and reason in json.loads(body)["reason"]
    # Liveness is judged only with a usable status; either way it answers, promptly.
    status, _ = await get(base, "/livez")
    assert status in (200, 503)
    assert (await get(base, "/healthz"))[0] == 200
    writer.close()


async def test_a_fifo_as_the_instance_lock_does_not_hang_the_probe(
    tmp_path: Path, probe_process: Callable[[], Any]
) -> None:
    state_dir = tmp_path / "state"
    writer = current_instance(state_dir)
    writer.close()  # the lock is free: as if the entrypoint died, and a FIFO took its place
    plant_fifo(state_dir / "instance.lock")
    base = await probe_process()
    status, body = await get(base, "/readyz")
    assert status == 503 and json.loads(body)["code"] == "stale-marker"


async def test_a_symlinked_state_directory_works_but_a_symlinked_file_does_not(
    tmp_path: Path, probe_process: Callable[[], Any]
) -> None:
    # The directory may be reached through a symlink (a mount layout); the files in it may not.
    real = tmp_path / "real-state"
    writer = current_instance(real)
    (tmp_path / "state").symlink_to(real)
    base = await probe_process()
    assert (await get(base, "/readyz"))[0] == 200
    (real / "elsewhere.json").write_bytes((real / READY_FILE).read_bytes())
    (real / READY_FILE).unlink()
    (real / READY_FILE).symlink_to(real / "elsewhere.json")
    status, body = await get(base, "/readyz")
    assert status == 503 and "ready.json is a symbolic link" in json.loads(body)["reason"]
    writer.close()


def write_status_with_message(state_dir: Path, message_bytes: int) -> None:
    """A status document whose message is `message_bytes` long, streamed to disk."""
    state_dir.mkdir(parents=True, exist_ok=True)
    head = (
        '{"instance_id": "current-instance", "pid": 1, "phase": "failed", "started_at": 0, '
        '"phase_started_at": 0, "updated_at": 0, "message": "'
    )
    chunk = "x" * (1 << 20)
    with (state_dir / STATUS_FILE).open("w") as f:
        f.write(head)
        for _ in range(message_bytes // len(chunk)):
            f.write(chunk)
        f.write("x" * (message_bytes % len(chunk)) + '"}')


async def test_a_100mb_message_is_never_echoed(tmp_path: Path, probe_process: Callable[[], Any]) -> None:
    write_status_with_message(tmp_path / "state", 100 * 2**20)
    base = await probe_process()
    for path in ("/startupz", "/readyz"):
        status, body = await get(base, path)
        assert status == 503 and len(body) < 2048, (path, len(body))
        assert "status.json is too large" in json.loads(body)["reason"]
    # The model server is alive, so liveness passes; nothing of the message comes with it.
    status, body = await get(base, "/livez")
    assert status == 200 and len(body) < 2048


async def test_long_strings_within_the_cap_are_cut_in_bodies_and_logs(
    state_dir: Path, config: Any, make_probe: ProbeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    long_message = "the server said: " + "y" * (STATUS_MAX_BYTES // 2)
    writer = StateWriter(state_dir, instance_id="i" * 10_000)
    writer.prepare()
    writer.set_phase(Phase.FAILED, long_message)
    writer.set_progress(1, 2, "d" * 50_000)
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz", "/livez"):
        response = await client.get(path)
        body = await response.json()
        assert len(body["reason"]) <= FIELD_MAX_CHARS, path
        assert len(body["instance_id"]) <= FIELD_MAX_CHARS
        assert len(body["message"]) <= MESSAGE_MAX_CHARS and body["message"].startswith("the server said")
        assert len(body["progress"]["detail"]) <= FIELD_MAX_CHARS
    assert max(len(record.getMessage()) for record in caplog.records) < 2 * FIELD_MAX_CHARS
    writer.close()


# ---- credentials --------------------------------------------------------------------------------


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://warmgate:{SECRET}@", 1)


async def all_bodies(client: Any) -> str:
    bodies = []
    for path in ("/startupz", "/readyz", "/livez", "/metrics"):
        response = await client.get(path)
        bodies.append(await response.text())
    return "\n".join(bodies)


async def test_a_password_in_the_server_url_is_redacted_in_bodies_and_logs(
    state_dir: Path,
    model_server: FakeModelServer,
    make_probe: ProbeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(state_dir, with_credentials(model_server.url), live_failures=1)
    writer = current_instance(state_dir)
    model_server.ready_status = model_server.live_status = 503
    _, client = await make_probe(config)
    text = await all_bodies(client)
    assert "model server not ready: GET http://***@127.0.0.1:" in text
    assert "model server not alive" in text and "http://***@127.0.0.1:" in text
    assert SECRET not in text
    # The sidecar's own liveness (the chart's probe of the sidecar container) does not follow the
    # model server's: a dead server must not get the sidecar restarted.
    assert (await client.get("/healthz")).status == 200
    assert caplog.records and not any(SECRET in record.getMessage() for record in caplog.records)
    writer.close()


async def test_a_password_in_an_unreachable_url_or_in_the_message_is_redacted(
    state_dir: Path, unused_tcp_port: int, make_probe: ProbeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = with_credentials(f"http://127.0.0.1:{unused_tcp_port}")
    config = make_config(state_dir, url, live_failures=1)
    writer = current_instance(state_dir)
    _, client = await make_probe(config)
    text = await all_bodies(client)
    assert "cannot connect" in text and SECRET not in text
    writer.set_phase(Phase.FAILED, f"server at {url}/v2 never became healthy")
    text = await all_bodies(client)
    assert "server at http://***@127.0.0.1" in text and SECRET not in text
    assert not any(SECRET in record.getMessage() for record in caplog.records)
    writer.close()
