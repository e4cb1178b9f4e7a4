"""Shared podman/buildah helpers for the container tests (test_container.py, test_injected.py, the
sidecar-mode pod tests) and bench/pod_modes.py.

No base image can be pulled here, so minimal Debian roots are bootstrapped with mmdebstrap and
imported once per container store. The store is a dedicated vfs store (the only driver that works
in this sandbox), kept between runs; WARMGATE_CONTAINER_STORE moves it. Images built from local
inputs are tagged with a hash of those inputs and reused while the inputs are unchanged; an older
tag of the same repository is removed when a new one is built (vfs stores every layer in full).

Only the podman flags in shared tooling notes work here: cgroupfs, runc, explicit ulimits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.deploy.conftest import REPO, find_tool, in_ci, require_tool

# The Dockerfile's base in the tests: a Debian python3 with venv (the base stage needs one) and the
# shared libpython (PyInstaller bundles it; Debian's python3 binary is linked statically).
BASE_REPOSITORY = "localhost/warmgate-test-base"
BASE_PACKAGES = ("python3", "python3-venv", "libpython3.11", "ca-certificates")
WARMGATE_IMAGE_REPOSITORY = "localhost/warmgate-test"
TEST_BUNDLE_MAX_GLIBC = "2.36"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DEFAULT_STORE = Path("/var/tmp/warmgate-container-test")
# Every container here needs these limits: the sandbox allows no larger ones. `podman pod create`
# has no --ulimit, so they are podman's defaults (containers.conf), which the pod's infra container
# gets too; RUN_FLAGS repeats them for readers.
ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")
RUN_FLAGS = ("--pull=never", *[arg for limit in ULIMITS for arg in ("--ulimit", limit)])
# Where `container` mounts the state directory, and where the tests mount their warmup.yaml.
STATE_MOUNT = "/var/run/warmgate"
CONFIG_MOUNT = "/etc/warmgate-test"

T = TypeVar("T")


@dataclass(frozen=True)
class Tools:
    podman: list[str]
    buildah: list[str]
    mmdebstrap: str


def store_flags(store: Path) -> list[str]:
    return ["--root", str(store / "root"), "--runroot", str(store / "runroot"), "--storage-driver", "vfs"]


def container_store() -> Path:
    return Path(os.environ.get("WARMGATE_CONTAINER_STORE", str(DEFAULT_STORE)))


def podman_tools() -> Tools:
    """The tools, or a skip (a failure when CI is set) when podman is not installed."""
    if find_tool("podman") is None and not in_ci():
        pytest.skip("podman is not installed (bash .ci/install-tools.sh); runs when CI is set")
    return tools_at(container_store(), require=require_tool)


def tools_at(store: Path, require: Callable[[str], str] = require_tool) -> Tools:
    flags = store_flags(store)
    store.mkdir(parents=True, exist_ok=True)
    conf = store / "containers.conf"
    limits = ", ".join(f'"{limit}"' for limit in ULIMITS)
    conf.write_text(f"[containers]\ndefault_ulimits = [{limits}]\n")
    # `env` rather than a subprocess env: the argv stays self-contained for every caller of run().
    podman = ["env", f"CONTAINERS_CONF={conf}", require("podman")]
    return Tools(
        podman=[*podman, *flags, "--cgroup-manager", "cgroupfs", "--runtime", "runc"],
        buildah=[require("buildah"), *flags],
        mmdebstrap=require("mmdebstrap"),
    )


def run(
    argv: Sequence[str], *, timeout: float = 120, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and done.returncode != 0:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(argv[:6])} ... exited {done.returncode}:\n{output}")
    return done


def inputs_digest(paths: Iterable[Path], *extra: str, root: Path = REPO) -> str:
    """A short hash of files (by path relative to `root`, and content) and extra strings."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for item in extra:
        digest.update(item.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def image_exists(tools: Tools, tag: str) -> bool:
    return run([*tools.podman, "image", "exists", tag], check=False).returncode == 0


def debian_tag(repository: str, packages: Iterable[str]) -> str:
    return f"{repository}:bookworm-{inputs_digest((), *sorted(packages))[:8]}"


def ensure_debian_image(tools: Tools, repository: str, packages: Sequence[str], workdir: Path) -> str:
    """A Debian bookworm minbase with `packages`, imported unless the store has it; returns its tag."""
    tag = debian_tag(repository, packages)
    if image_exists(tools, tag):
        return tag
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / f"rootfs-{uuid.uuid4().hex[:8]}.tar"
    include = ",".join(packages)
    run(
        [tools.mmdebstrap, "--quiet", "--variant=minbase", f"--include={include}", "bookworm", str(rootfs)],
        timeout=300,
    )
    try:
        run([*tools.podman, "import", str(rootfs), tag], timeout=120)
    finally:
        rootfs.unlink(missing_ok=True)
    return tag


BASE_IMAGE = debian_tag(BASE_REPOSITORY, BASE_PACKAGES)


def ensure_base_image(tools: Tools, tmp_path: Path) -> str:
    return ensure_debian_image(tools, BASE_REPOSITORY, BASE_PACKAGES, tmp_path)


def remove_other_tags(tools: Tools, repository: str, keep: str) -> None:
    """Remove earlier hash-tagged builds of `repository` (a vfs store keeps every layer in full)."""
    listed = run([*tools.podman, "images", "--format", "{{.Repository}}:{{.Tag}}", repository], check=False)
    for tag in listed.stdout.split():
        if tag.startswith(f"{repository}:") and tag != keep:
            run([*tools.podman, "rmi", "--force", tag], check=False)
    run([*tools.podman, "image", "prune", "--force"], check=False, timeout=300)


def build_image(
    tools: Tools,
    repository: str,
    context: Path,
    inputs: Iterable[Path],
    *,
    build_args: Sequence[str] = (),
    extra_flags: Sequence[str] = (),
    timeout: float = 900,
) -> str:
    """`buildah bud` of `context`, tagged `repository:<hash of inputs and args>`; reused if present."""
    tag = f"{repository}:{inputs_digest(inputs, *build_args, *extra_flags, root=context)}"
    if image_exists(tools, tag):
        return tag
    started = time.monotonic()
    run(
        [
            *tools.buildah, "bud", "--isolation", "chroot", "--pull=never", "--format", "docker",
            *[arg for item in build_args for arg in ("--build-arg", item)],
            # pip inside RUN verifies PyPI's certificate with the host's bundle.
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            *extra_flags, "-t", tag, str(context),
        ],
        timeout=timeout,
    )  # fmt: skip
    print(f"built {tag} in {time.monotonic() - started:.0f}s")
    remove_other_tags(tools, repository, keep=tag)
    return tag


def warmgate_context_files() -> list[Path]:
    """The files the Dockerfile's build context holds (see .dockerignore) plus the Dockerfile."""
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "warmup.yaml"]
    files += [REPO / "README.md"] if (REPO / "README.md").exists() else []
    for folder in ("warmgate", "deploy/bundle"):
        files += [
            path
            for path in (REPO / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        ]
    return files


def ensure_warmgate_image(tools: Tools, tmp_path: Path) -> str:
    """The CPU warmgate image built from this checkout on the local Debian base; reused by hash.
    WARMGATE_TEST_IMAGE=<tag> uses an image already in the store instead (while iterating on the
    tests only: the hash covers warmgate/, so any source change means a rebuild of several minutes)."""
    if given := os.environ.get("WARMGATE_TEST_IMAGE"):
        if not image_exists(tools, given):
            raise AssertionError(f"WARMGATE_TEST_IMAGE={given} is not in the container store")
        return given
    ensure_base_image(tools, tmp_path)
    return build_image(
        tools,
        WARMGATE_IMAGE_REPOSITORY,
        REPO,
        warmgate_context_files(),
        build_args=(
            f"BASE_IMAGE={BASE_IMAGE}",
            f"BUNDLE_BASE_IMAGE={BASE_IMAGE}",
            "VARIANT=cpu",
            # Debian's own python3 builds pyexpat into libpython, so its bundle carries Debian 12's
            # libexpat, which needs GLIBC_2.36; the image's default base (a source-built CPython,
            # pyexpat a module the bundle leaves out) stays at 2.35. test_injected.py checks that
            # libexpat is the only file above 2.35.
            f"BUNDLE_MAX_GLIBC={TEST_BUNDLE_MAX_GLIBC}",
        ),
    )


def world_writable_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)  # the containers' non-root users write here
    return path


def config_dir(path: Path, warmup: dict[str, Any]) -> Path:
    """`path`/warmup.yaml holding `warmup`, for a read-only mount at CONFIG_MOUNT; returns `path`."""
    path.mkdir()
    (path / "warmup.yaml").write_text(yaml.safe_dump(warmup))
    path.chmod(0o755)  # the containers' non-root users read it
    return path


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

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def logs(self) -> str:
        done = run([*self.tools.podman, "logs", self.name], check=False)
        return done.stdout + done.stderr


@contextlib.contextmanager
def container(
    tools: Tools,
    image: str,
    state: Path | None,
    *env: str,
    extra: Sequence[str] = (),
    network: Sequence[str] = ("--network", "none"),
    command: Sequence[str] = (),
) -> Iterator[Container]:
    """A detached container, removed on exit; `state` (if any) mounted at STATE_MOUNT."""
    name = f"warmgate-test-{uuid.uuid4().hex[:8]}"
    volume = ["-v", f"{state}:{STATE_MOUNT}"] if state is not None else []
    run(
        [
            *tools.podman, "run", "--detach", *RUN_FLAGS, "--name", name, *network,
            *volume, *extra,
            *[arg for item in env for arg in ("-e", item)],
            image, *command,
        ]
    )  # fmt: skip
    try:
        yield Container(tools, name)
    finally:
        run([*tools.podman, "rm", "--force", "--time", "0", name], check=False)


@contextlib.contextmanager
def pod(tools: Tools) -> Iterator[str]:
    """A podman pod (shared network namespace, loopback only); removed with its containers on exit."""
    name = f"warmgate-pod-{uuid.uuid4().hex[:8]}"
    run([*tools.podman, "pod", "create", "--name", name, "--network", "none"])
    try:
        yield name
    finally:
        run([*tools.podman, "pod", "rm", "--force", "--time", "0", name], check=False, timeout=120)


def wait_for(condition: Callable[[], T], deadline_s: float, what: str, *boxes: Container) -> T:
    """Poll `condition` until truthy; fail early (with logs) when any of `boxes` has exited."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for box in boxes:
            if not box.running():
                raise AssertionError(f"{box.name} exited while waiting for {what}:\n{box.logs()[-4000:]}")
        time.sleep(0.05)
    logs = "\n".join(f"--- {box.name}\n{box.logs()[-3000:]}" for box in boxes)
    raise AssertionError(f"no {what} within {deadline_s:g}s:\n{logs}")


def stop_and_watch_phases(
    tools: Tools, box: Container, state: Path, first_phase: str, *, deadline_s: float
) -> list[str]:
    """`podman stop` (SIGTERM, then SIGKILL after 60 s) while recording each phase status.json
    shows, from `first_phase` (the one before the stop) to the one left after it."""
    stopper = subprocess.Popen(
        [*tools.podman, "stop", "--time", "60", box.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    phases = [first_phase]
    try:
        deadline = time.monotonic() + deadline_s
        while stopper.poll() is None and time.monotonic() < deadline:
            current = read_status(state)
            if current is not None and current["phase"] != phases[-1]:
                phases.append(current["phase"])
            time.sleep(0.02)
        stopper.wait(timeout=deadline_s)
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.wait()
    final = read_status(state)
    assert final is not None, f"no status.json after the stop (phases seen: {phases})"
    if final["phase"] != phases[-1]:
        phases.append(final["phase"])
    return phases
