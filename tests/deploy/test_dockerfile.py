"""The Dockerfile without building it: hadolint, and the contract the chart and docs rely on."""

from __future__ import annotations

import json
import re
import subprocess

import tomllib
import yaml

from tests.deploy.conftest import REPO, require_tool

DOCKERFILE = (REPO / "Dockerfile").read_text()
BUNDLE = REPO / "deploy" / "bundle"


def test_hadolint_clean() -> None:
    hadolint = require_tool("hadolint")
    done = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_entrypoint_cmd_and_user() -> None:
    assert 'ENTRYPOINT ["warmgate", "run", "--"]' in DOCKERFILE
    assert re.search(r'^CMD \["warmgate", "serve", "--demo", "--host", "0\.0\.0\.0"', DOCKERFILE, re.M)
    final = DOCKERFILE[DOCKERFILE.index("AS final") :]
    assert re.search(r"^USER 10001:10001$", final, re.M), "the final stage must run as the non-root user"
    # The chart's podSecurityContext runs as this uid too.
    values = (REPO / "deploy" / "helm" / "warmgate" / "values.yaml").read_text()
    assert "runAsUser: 10001" in values


def test_final_stage_copies_only_the_venv_the_bundle_and_the_config() -> None:
    final = DOCKERFILE[DOCKERFILE.index("AS final") :]
    copies = re.findall(r"^COPY .*$", final, re.M)
    assert copies == [
        "COPY --from=build /opt/warmgate /opt/warmgate",
        # The chart's injected mode copies /opt/warmgate-bundle/. out of this image.
        "COPY --from=bundle /opt/warmgate-bundle /opt/warmgate-bundle",
        "COPY warmup.yaml /etc/warmgate/warmup.yaml",
    ]
    assert "pip install" not in final and "apt-get" not in final
    build = DOCKERFILE[DOCKERFILE.index("AS build") : DOCKERFILE.index("AS final")]
    assert "pip uninstall --yes pip setuptools wheel" in build
    assert "--no-cache-dir" in build


def test_cpu_packages_mirror_the_server_extra_without_gpu_or_torch() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    server_extra = pyproject["project"]["optional-dependencies"]["server"]
    names = {re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip() for requirement in server_extra}
    expected = {("onnxruntime" if name == "onnxruntime-gpu" else name) for name in names}
    cpu_line = re.search(r'pip install --no-cache-dir "\.\[k8s\]"(.*?)fi', DOCKERFILE, re.S)
    assert cpu_line is not None
    installed = set(re.findall(r'"([A-Za-z0-9_.-]+)[<>=]', cpu_line.group(1)))
    assert installed == expected, "keep the Dockerfile's CPU list in step with the server extra"
    assert "onnxruntime-gpu" not in cpu_line.group(1)
    assert not re.search(r"\btorch\b", cpu_line.group(1))
    assert '".[server,k8s]"' in DOCKERFILE  # the GPU variant takes the extra as it is


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"
    assert {"!warmgate/", "!pyproject.toml", "!warmup.yaml", "!deploy/bundle/"} <= set(lines)


def test_bundle_stage_builds_a_one_dir_bundle_with_a_glibc_ceiling() -> None:
    bundle = DOCKERFILE[DOCKERFILE.index("AS bundle") : DOCKERFILE.index("AS final")]
    assert "ARG BUNDLE_MAX_GLIBC=2.35" in bundle
    # Its own base, the same for the cpu and gpu variants (no CUDA in it).
    assert "ARG BUNDLE_BASE_IMAGE=python:3.11-slim-bookworm" in DOCKERFILE
    assert re.search(r"^FROM \$\{BUNDLE_BASE_IMAGE\} AS bundle$", DOCKERFILE, re.M)
    assert "pip install --no-cache-dir -r deploy/bundle/requirements.txt" in bundle
    assert "deploy/bundle/warmgate.spec" in bundle
    assert 'glibc_floor.py --max "$BUNDLE_MAX_GLIBC" /opt/warmgate-bundle' in bundle
    assert "chmod -R a+rX,go-w /opt/warmgate-bundle" in bundle  # any uid runs it
    assert "/opt/warmgate-bundle/warmgate --version" in bundle
    spec = (BUNDLE / "warmgate.spec").read_text()
    # One-dir: an EXE without its binaries, gathered by COLLECT into warmgate-bundle/.
    assert "exclude_binaries=True" in spec and 'name="warmgate-bundle"' in spec and "COLLECT(" in spec
    for heavy in ("torch", "onnxruntime", "onnx", "tokenizers", "kubernetes", "matplotlib"):
        assert f'"{heavy}"' in spec, heavy


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_bundle_requirements_pin_every_core_dependency_and_pyinstaller() -> None:
    lines = [
        line.strip()
        for line in (BUNDLE / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in line for line in lines), "every bundle requirement is pinned"
    assert "pyinstaller==6.22.3" in lines
    pinned = {requirement_name(line) for line in lines}
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    missing = {requirement_name(requirement) for requirement in core} - pinned
    assert not missing, f"core dependencies not pinned for the bundle: {sorted(missing)}"


def test_the_image_exposes_and_serves_the_ports_the_chart_uses() -> None:
    values = yaml.safe_load((REPO / "deploy" / "helm" / "warmgate" / "values.yaml").read_text())
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M)
    assert exposed is not None
    wanted = {values["modelPort"], values["grpcPort"], values["probe"]["port"]}
    assert wanted == {8000, 8001, 8086} and {str(p) for p in wanted} <= set(exposed.group(1).split())
    # The image's default server is the chart's: HTTP on modelPort, gRPC on grpcPort.
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    assert json.loads(cmd.group(1)) == values["warmup"]["server"]["command"]
