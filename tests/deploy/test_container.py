"""Build the CPU image with buildah and run it with podman: warm, ready, probe, SIGTERM, drain.

No base image can be pulled here, so a minimal Debian (python3, python3-venv, ca-certificates) is
bootstrapped with mmdebstrap and imported once per container store; the Dockerfile gets it as
BASE_IMAGE. The store is a dedicated vfs store (the only driver that works in this sandbox), kept
between runs for the base image; WARMGATE_CONTAINER_STORE moves it.

Skipped when podman is missing and CI is not set; with CI set it must run. Takes about 2-3 minutes
(most of it pip downloading the wheels into the image).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, find_tool, in_ci, require_tool
from warmgate import exitcodes

pytestmark = [pytest.mark.container, pytest.mark.slow]

BASE_IMAGE = "localhost/warmgate-test-base:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Deadlines, not sleeps: every wait below polls until the condition or the deadline.
READY_DEADLINE_S = 180.0
DRAIN_DEADLINE_S = 60.0


@dataclass(frozen=True)
class Tools:
    podman: list[str]
    buildah: list[str]
    mmdebstrap: str


def store_flags(store: Path) -> list[str]:
    return ["--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs"]


@pytest.fixture(scope="module")
def tools() -> Tools:
    if find_tool("podman") is None and not in_ci():
        pytest.skip("podman is not installed (bash .ci/install-tools.sh); runs when CI is set")
    store = Path(os.environ.get("WARMGATE_CONTAINER_STORE", "/var/tmp/warmgate-container-test"))
    flags = store_flags(store)
    return Tools(
        podman=[require_tool("podman"), *flags, "--cgroup-manager", "cgroupfs", "--runtime", "runc"],
        buildah=[require_tool("buildah"), *flags],
        mmdebstrap=require_tool("mmdebstrap"),
    )


def run(
    argv: Sequence[str], *, timeout: float = 120, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(argv[:6])} ... exited {done.returncode}:\n{output}")
    return done


def ensure_base_image(tools: Tools, tmp_path: Path) -> None:
    if run([*tools.podman, "image", "exists", BASE_IMAGE], check=False).returncode == 0:
        return
    rootfs = tmp_path / "rootfs.tar"
    run(
        [
            tools.mmdebstrap, "--quiet", "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates", "bookworm", str(rootfs),
        ],
        timeout=300,
    )  # fmt: skip
    run([*tools.podman, "import", str(rootfs), BASE_IMAGE], timeout=120)


@pytest.fixture(scope="module")
def image(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ensure_base_image(tools, tmp_path_factory.mktemp("base"))
    tag = f"localhost/warmgate-test:{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    run(
        [
            *tools.buildah, "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "VARIANT=cpu",
            # pip inside RUN verifies PyPI's certificate with the host's bundle.
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            "-t", tag, str(REPO),
        ],
        timeout=420,
    )  # fmt: skip
    print(f"built {tag} in {time.monotonic() - started:.0f}s")
    yield tag
    run([*tools.podman, "rmi", "--force", tag], check=False)
    run([*tools.podman, "image", "prune", "--force"], check=False)


def read_status(state: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads((state / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return loaded


class Container:
    def __init__(self, tools: Tools, name: str) -> None:
        self.tools, self.name = tools, name

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.tools.podman, "exec", self.name, *argv], check=check)

    def state(self) -> dict[str, Any]:
        out = run([*self.tools.podman, "inspect", self.name, "--format", "{{json .State}}"]).stdout
        loaded: dict[str, Any] = json.loads(out)
        return loaded

    def logs(self) -> str:
        done = run([*self.tools.podman, "logs", self.name], check=False)
        return done.stdout + done.stderr


@contextlib.contextmanager
def container(
    tools: Tools, image: str, state: Path, *env: str, extra: Sequence[str] = ()
) -> Iterator[Container]:
    name = f"warmgate-test-{uuid.uuid4().hex[:8]}"
    run(
        [
            *tools.podman, "run", "--detach", "--pull=never", "--name", name,
            "--network", "none",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "-v", f"{state}:/var/run/warmgate", *extra,
            *[arg for item in env for arg in ("-e", item)],
            image,
        ]
    )  # fmt: skip
    try:
        yield Container(tools, name)
    finally:
        run([*tools.podman, "rm", "--force", "--time", "0", name], check=False)


def wait_for(condition: Any, deadline_s: float, what: str, box: Container) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not box.state().get("Running"):
            raise AssertionError(f"container exited while waiting for {what}:\n{box.logs()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {deadline_s:g}s:\n{box.logs()[-4000:]}")


@pytest.mark.timeout(600)
def test_image_warms_serves_probes_and_drains_on_sigterm(tools: Tools, image: str, tmp_path: Path) -> None:
    config = json.loads(
        run([*tools.podman, "image", "inspect", image, "--format", "{{json .Config}}"]).stdout
    )
    assert config["Entrypoint"] == ["warmgate", "run", "--"]
    assert config["Cmd"][:3] == ["warmgate", "serve", "--demo"]
    assert config["User"] == "10001:10001"

    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)  # the container's non-root user writes here
    # The repository's default config, with a gate that tolerates this shared 2-core machine's
    # noise (the gate's thresholds have their own tests); mounted the way the chart mounts it.
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    warmup = yaml.safe_load((REPO / "warmup.yaml").read_text())
    warmup["gate"] = {**warmup.get("gate", {}), "max_first_to_steady_ratio": 100.0}
    warmup.pop("state_dir", None)
    (config_dir / "warmup.yaml").write_text(yaml.safe_dump(warmup))
    config_dir.chmod(0o755)
    mounts = ("-v", f"{config_dir}:/etc/warmgate-test:ro")
    env = (
        "WARMGATE_CONFIG=/etc/warmgate-test/warmup.yaml",
        # A short load test and quiet period keep the test quick; both are documented overrides.
        "WARMGATE_LOAD_DURATION=2",
        "WARMGATE_QUIET_PERIOD=3",
    )
    with container(tools, image, state, *env, extra=mounts) as box:
        wait_for((state / "ready.json").exists, READY_DEADLINE_S, "ready marker", box)
        status = read_status(state)
        assert status is not None and status["phase"] == "ready" and status["pid"] == 1
        report = json.loads((state / "ready.json").read_text())
        assert report["gate"]["passed"] is True

        # Non-root, and no package manager or compiler in the final image.
        assert box.exec("id", "-u").stdout.strip() == "10001"
        found = box.exec("sh", "-c", "command -v pip pip3 gcc cc; ls /opt/warmgate/bin", check=False).stdout
        assert not {"pip", "pip3", "gcc", "cc"} & {Path(line).name for line in found.split()}

        # The probe sidecar runs from the same image with another command.
        run([*tools.podman, "exec", "--detach", box.name, "warmgate", "probe", "--port", "8086"])
        probe_script = (
            "import sys, time, urllib.request\n"
            "deadline = time.monotonic() + 30\n"
            "while True:\n"
            "    try:\n"
            "        r = urllib.request.urlopen('http://127.0.0.1:8086/readyz', timeout=2)\n"
            "        break\n"
            "    except OSError:\n"
            "        if time.monotonic() > deadline: raise\n"
            "        time.sleep(0.05)\n"
            "print(r.status)\n"
            "m = urllib.request.urlopen('http://127.0.0.1:8086/metrics', timeout=2).read().decode()\n"
            "print('\\n'.join(l for l in m.splitlines() if l.startswith('warmgate_ready')))\n"
        )
        probed = box.exec("python3", "-c", probe_script).stdout.split()
        assert probed[0] == "200"
        assert "warmgate_ready" in probed and "1.0" in probed

        # SIGTERM (podman stop): readiness fails first (draining), then the server stops.
        stopper = subprocess.Popen(
            [*tools.podman, "stop", "--time", "60", box.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            phases = [status["phase"]]
            deadline = time.monotonic() + DRAIN_DEADLINE_S
            while stopper.poll() is None and time.monotonic() < deadline:
                current = read_status(state)
                if current is not None and current["phase"] != phases[-1]:
                    phases.append(current["phase"])
                time.sleep(0.02)
            stopper.wait(timeout=DRAIN_DEADLINE_S)
        finally:
            if stopper.poll() is None:
                stopper.kill()
                stopper.wait()
        final = read_status(state)
        assert final is not None
        if final["phase"] != phases[-1]:
            phases.append(final["phase"])

        logs = box.logs()
        assert phases == ["ready", "draining", "stopped"], logs[-3000:]
        assert not (state / "ready.json").exists(), "the ready marker must be gone once draining starts"
        assert "draining: readiness fails now" in logs
        assert box.state()["ExitCode"] == exitcodes.OK, logs[-3000:]


@pytest.mark.timeout(300)
def test_gpu_variant_refuses_a_base_without_cuda(tools: Tools, tmp_path: Path) -> None:
    # The GPU variant comes from the same file; on a base without the CUDA runtime it must stop
    # before installing anything rather than build an image that silently runs on the CPU.
    ensure_base_image(tools, tmp_path)
    done = run(
        [
            *tools.buildah, "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "VARIANT=gpu",
            "--target", "build", "-t", f"localhost/warmgate-test-gpu:{uuid.uuid4().hex[:12]}", str(REPO),
        ],
        timeout=240,
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "VARIANT=gpu needs a CUDA 12 runtime base" in done.stdout + done.stderr
