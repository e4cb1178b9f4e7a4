"""The Dockerfile without building it: hadolint, and the contract the chart and docs rely on."""

from __future__ import annotations

import json
import re
import subprocess

import tomllib
import yaml

from tests.deploy.conftest import REPO, require_tool

DOCKERFILE = (REPO / "Dockerfile").read_text()


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


def test_final_stage_copies_only_the_venv_and_the_config() -> None:
    final = DOCKERFILE[DOCKERFILE.index("AS final") :]
    copies = re.findall(r"^COPY .*$", final, re.M)
    assert copies == [
        "COPY --from=build /opt/warmgate /opt/warmgate",
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
    assert {"!warmgate/", "!pyproject.toml", "!warmup.yaml"} <= set(lines)


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
