"""Shared helpers for the deployment tests: tools from PATH or ./.tools/bin, and helm rendering.

A missing tool skips its tests on a developer's machine (`bash .ci/install-tools.sh` installs them)
but fails them when CI is set: CI must never pass by skipping the chart or container tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from tests.deploy.podman import Tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "warmgate"
TOOLS_BIN = REPO / ".tools" / "bin"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        message = f"{name} is not installed (bash .ci/install-tools.sh installs it into .tools/bin)"
        if in_ci():
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    return require_tool("helm")


class HelmError(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def run_helm(helm: str, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # HELM_* state dirs under the test's tmp dir: no reads or writes of the user's helm config.
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(cwd / ".helm-cache"),
        "HELM_CONFIG_HOME": str(cwd / ".helm-config"),
        "HELM_DATA_HOME": str(cwd / ".helm-data"),
    }
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env, check=False
    )


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def render(helm: str, tmp_path: Path) -> Render:
    """helm template with a values dict; returns the rendered objects. Raises HelmError on failure."""
    counter = iter(range(1_000_000))

    def render_(
        values: dict[str, Any] | None = None,
        *,
        release: str = "demo",
        namespace: str = "shop",
        kube_version: str | None = None,
        chart: Path = CHART,
    ) -> list[dict[str, Any]]:
        values_file = tmp_path / f"values-{next(counter)}.yaml"
        values_file.write_text(yaml.safe_dump(values or {}))
        args = ["template", release, str(chart), "--namespace", namespace, "-f", str(values_file)]
        if kube_version:
            args += ["--kube-version", kube_version]
        done = run_helm(helm, args, tmp_path)
        if done.returncode != 0:
            raise HelmError(done.stderr)
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return render_


# The podman fixtures of the container tests (test_container, test_injected, test_sidecar_pod): one
# store and one build of each image per session, reused while the images' inputs are unchanged.
# (Imported inside: podman.py imports this module's tool lookup.)
@pytest.fixture(scope="session")
def tools() -> Tools:
    from tests.deploy.podman import podman_tools

    return podman_tools()


@pytest.fixture(scope="session")
def warmgate_image(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.deploy.podman import ensure_warmgate_image

    return ensure_warmgate_image(tools, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def foreign_images(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tests.deploy.foreign_images import FOREIGN_SERVERS

    workdir = tmp_path_factory.mktemp("foreign")
    return {server.name: server.build(tools, workdir) for server in FOREIGN_SERVERS}
