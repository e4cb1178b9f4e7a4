"""Injected mode in podman pods: the self-contained warmgate runs as the entrypoint of server images
that are not warmgate's (tests/deploy/foreign_images.py: nginx with no Python at all, and MLServer
on Debian's own python3), the way the chart's injected mode runs them:

- an init step copies /opt/warmgate-bundle/. out of the warmgate image into a volume (the chart's
  init container, `cp -R` into an emptyDir; tests/deploy/test_chart_modes.py pins the chart to the
  same command);
- the server container runs the foreign image with `--entrypoint <volume>/warmgate` and
  `run -- <the image's server command>`: warms, gates, writes the marker;
- the sidecar runs `warmgate probe` from the warmgate image in the same pod (shared loopback, the
  state directory as a shared volume) and answers /readyz 200 after the marker;
- `podman stop` of the server container drains: readiness fails first, requests that keep coming
  during the quiet period (as they do until endpoints move) all succeed, then the server stops and
  warmgate exits with the server's own code (0 for a clean stop, README's exit codes).

Plus the bundle itself: its glibc floor (deploy/bundle/glibc_floor.py) on the built bundle, and
that it runs in an image without Python. Skipped when podman is missing and CI is not set.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO
from tests.deploy.foreign_images import FOREIGN_SERVERS, NGINX, ForeignServer, foreign_warmup
from tests.deploy.pod_traffic import PROBE_PORT, Pod, clients_sending, pod_config, warmgate_sidecar
from tests.deploy.podman import (
    CONFIG_MOUNT,
    RUN_FLAGS,
    STATE_MOUNT,
    TEST_BUNDLE_MAX_GLIBC,
    Container,
    Tools,
    config_dir,
    container,
    pod,
    read_status,
    run,
    stop_and_watch_phases,
    wait_for,
    world_writable_dir,
)
from warmgate import exitcodes

CONTAINER = [pytest.mark.container, pytest.mark.slow]
GLIBC_FLOOR_SCRIPT = REPO / "deploy" / "bundle" / "glibc_floor.py"
# Ubuntu 22.04's glibc: the oldest of the server bases the bundle promises to run on.
GLIBC_CEILING = (2, 35)
# What the bundle may take from the system: glibc itself and the C++ runtime (as manylinux wheels do).
SYSTEM_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libstdc++.so.6", "libgcc_s.so.1",
}  # fmt: skip
READY_DEADLINE_S = 240.0
DRAIN_DEADLINE_S = 60.0
BUNDLE_MOUNT = "/warmgate"

PROBE_GET = """
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
        break
    except urllib.error.HTTPError as exc:
        if time.monotonic() > deadline:
            print(exc.code)
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.05)
"""


def copy_bundle_out(tools: Tools, warmgate_image: str, target: Path, *, pod_name: str | None = None) -> None:
    """The chart's init container: `cp -R /opt/warmgate-bundle/. <volume>/` from the warmgate image,
    as uid 10001 into a directory root owns with mode 0777, as an emptyDir is. Not `cp -a`: it
    would set the times of the volume's own directory, which only its owner (or root) may do."""
    world_writable_dir(target)
    where = ["--pod", pod_name] if pod_name else ["--network", "none"]
    run(
        [
            *tools.podman, "run", "--rm", *RUN_FLAGS, *where,
            "-v", f"{target}:{BUNDLE_MOUNT}", "--entrypoint", "cp",
            warmgate_image, "-R", "/opt/warmgate-bundle/.", f"{BUNDLE_MOUNT}/",
        ],
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tools: Tools, warmgate_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("bundle") / "warmgate"
    copy_bundle_out(tools, warmgate_image, target)
    return target


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def glibc_survey(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(GLIBC_FLOOR_SCRIPT), "--json", *extra, str(root)], check=False)


def test_glibc_floor_script_reads_the_versions_an_elf_needs(tmp_path: Path) -> None:
    # The interpreter running the tests is an ELF that needs glibc: its floor must be one of the
    # GLIBC_ version strings it carries, the highest of those it references (version definitions
    # live in libc itself, so an executable's strings are all requirements).
    executable = Path(sys.executable).resolve()
    shutil.copy(executable, tmp_path / executable.name)
    (tmp_path / "notes.txt").write_text("GLIBC_9.99 in a text file is not a requirement\n")
    survey = json.loads(glibc_survey(tmp_path).stdout)
    data = executable.read_bytes()
    referenced = {
        tuple(int(p) for p in m.split(b".")) for m in re.findall(rb"GLIBC_(\d+\.\d+(?:\.\d+)?)\x00", data)
    }
    assert survey["glibc_floor"] is not None
    floor = version(survey["glibc_floor"])
    assert floor == max(referenced)
    assert survey["files"] == 2 and survey["elf_files"] == 1
    assert survey["set_by"] == [executable.name]
    assert "libc.so.6" in survey["system_libraries"]
    below = ".".join(str(part) for part in (floor[0], floor[1] - 1))
    assert glibc_survey(tmp_path, "--max", below).returncode == 1
    assert glibc_survey(tmp_path, "--max", survey["glibc_floor"]).returncode == 0


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bundle_glibc_floor_and_size(bundle: Path) -> None:
    done = glibc_survey(bundle)
    assert done.returncode == 0, done.stderr
    survey = json.loads(done.stdout)
    print(f"bundle: {json.dumps(survey)}")
    floor = version(survey["glibc_floor"])
    assert (2, 17) <= floor <= version(TEST_BUNDLE_MAX_GLIBC), survey
    # Above Ubuntu 22.04's glibc only libexpat, which the image's default base (a source-built
    # CPython whose pyexpat module the bundle leaves out) does not bundle; see podman.py.
    above = {
        Path(file).name
        for needed, files in survey["needing"].items()
        if version(needed) > GLIBC_CEILING
        for file in files
    }
    assert above <= {"libexpat.so.1"}, survey["needing"]
    assert set(survey["system_libraries"]) <= SYSTEM_LIBRARIES, survey["system_libraries"]
    assert (bundle / "warmgate").is_file() and (bundle / "_internal").is_dir()
    # Neither the reference server's runtimes nor the Kubernetes client are in it.
    names = {path.name for path in (bundle / "_internal").iterdir()}
    assert not {"torch", "onnxruntime", "onnx", "tokenizers", "kubernetes", "matplotlib"} & names
    assert survey["size_mb"] < 250, survey["size_mb"]


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bundle_runs_in_an_image_without_python(
    tools: Tools, bundle: Path, foreign_images: dict[str, str]
) -> None:
    def in_nginx_image(*argv: str) -> subprocess.CompletedProcess[str]:
        return run(
            [
                *tools.podman, "run", "--rm", *RUN_FLAGS, "--network", "none",
                "-v", f"{bundle}:{BUNDLE_MOUNT}:ro", "--entrypoint", argv[0],
                foreign_images[NGINX.name], *argv[1:],
            ],
            check=False,
        )  # fmt: skip

    looked = in_nginx_image("sh", "-c", "command -v python3 python3.11 python; ls /usr/bin /usr/local/bin")
    assert not [name for name in looked.stdout.split() if name.startswith("python")], looked.stdout
    version = in_nginx_image(f"{BUNDLE_MOUNT}/warmgate", "--version")
    assert (version.returncode, version.stdout.strip()) == (0, "warmgate 0.1.0"), version.stderr
    helped = in_nginx_image(f"{BUNDLE_MOUNT}/warmgate", "run", "--help")
    assert helped.returncode == 0 and "usage: warmgate run" in helped.stdout, helped.stderr
    # The reference server is not in the bundle: one line, a usage error, no traceback.
    served = in_nginx_image(f"{BUNDLE_MOUNT}/warmgate", "serve", "--demo")
    assert served.returncode == exitcodes.CONFIG_ERROR
    assert served.stderr.count("\n") == 1 and "not in this self-contained bundle" in served.stderr
    assert "Traceback" not in served.stderr
    # A config is validated (pydantic, yaml and the protocol registry all load from the bundle).
    checked = in_nginx_image(f"{BUNDLE_MOUNT}/warmgate", "schema")
    assert checked.returncode == 0 and json.loads(checked.stdout)["$schema"]


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_server_gets_the_containers_environment_not_the_bundles(
    tools: Tools, bundle: Path, foreign_images: dict[str, str], tmp_path: Path
) -> None:
    # PyInstaller's bootloader sets LD_LIBRARY_PATH to the bundle and _PYI_* for itself; the
    # server must start with the container's own environment (its libraries, not the bundle's).
    config = config_dir(tmp_path / "config", foreign_warmup(NGINX))
    state = world_writable_dir(tmp_path / "state")

    def server_env(*env: str) -> dict[str, str]:
        done = run(
            [
                *tools.podman, "run", "--rm", *RUN_FLAGS, "--network", "none",
                "-v", f"{bundle}:{BUNDLE_MOUNT}:ro", "-v", f"{config}:{CONFIG_MOUNT}:ro",
                "-v", f"{state}:{STATE_MOUNT}",
                "-e", f"WARMGATE_CONFIG={CONFIG_MOUNT}/warmup.yaml", *[a for e in env for a in ("-e", e)],
                "--entrypoint", f"{BUNDLE_MOUNT}/warmgate", foreign_images[NGINX.name],
                # The "server" prints its environment and exits 3: warmgate exits with its code.
                "run", "--", "sh", "-c", "env; exit 3",
            ],
            check=False,
        )  # fmt: skip
        assert done.returncode == 3, done.stderr[-2000:]
        return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)

    plain = server_env()
    assert "LD_LIBRARY_PATH" not in plain and "LD_LIBRARY_PATH_ORIG" not in plain
    assert not [name for name in plain if name.startswith("_PYI")], sorted(plain)
    assert plain["WARMGATE_CONFIG"] == f"{CONFIG_MOUNT}/warmup.yaml"  # the rest passes through
    own = server_env("LD_LIBRARY_PATH=/opt/server/lib")
    assert own["LD_LIBRARY_PATH"] == "/opt/server/lib" and "LD_LIBRARY_PATH_ORIG" not in own


@pytest.fixture
def injected_pod(
    request: pytest.FixtureRequest,
    tools: Tools,
    warmgate_image: str,
    foreign_images: dict[str, str],
    tmp_path: Path,
) -> Iterator[Pod]:
    server: ForeignServer = request.param
    setup = pod_config(tmp_path, server)
    with pod(tools) as pod_name:
        volume = tmp_path / "warmgate"
        copy_bundle_out(tools, warmgate_image, volume, pod_name=pod_name)
        in_pod = ("--pod", pod_name)
        with (
            container(
                tools, foreign_images[server.name], setup.state, *setup.env, network=in_pod,
                extra=(*setup.mount, "-v", f"{volume}:{BUNDLE_MOUNT}:ro", "--user", server.user,
                       "--entrypoint", f"{BUNDLE_MOUNT}/warmgate"),
                command=("run", "--", *server.command),
            ) as server_box,
            warmgate_sidecar(tools, warmgate_image, pod_name, setup, "probe") as sidecar_box,
        ):  # fmt: skip
            yield Pod(pod_name, server, server_box, sidecar_box, setup.state)


def probe_status(sidecar: Container, path: str, deadline_s: float = 30) -> int:
    done = sidecar.exec("python3", "-c", PROBE_GET, f"http://127.0.0.1:{PROBE_PORT}{path}", str(deadline_s))
    return int(done.stdout.split()[-1])


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize(
    "injected_pod", FOREIGN_SERVERS, ids=[s.name for s in FOREIGN_SERVERS], indirect=True
)
def test_injected_warmgate_warms_gates_and_drains_a_foreign_server(tools: Tools, injected_pod: Pod) -> None:
    the_pod, server = injected_pod, injected_pod.spec
    marker = the_pod.state / "ready.json"
    wait_for(marker.exists, READY_DEADLINE_S, "ready marker", the_pod.server, the_pod.sidecar)
    status = read_status(the_pod.state)
    assert status is not None and status["phase"] == "ready"
    # The bundle runs Python inside its own process: warmgate is PID 1 of the server container.
    assert status["pid"] == 1
    report = json.loads(marker.read_text())
    assert report["gate"]["passed"] is True
    assert probe_status(the_pod.sidecar, "/readyz") == 200
    assert probe_status(the_pod.sidecar, "/startupz") == 200

    # The stop once the clients' first answers came (the handshake): it meets traffic in flight.
    with clients_sending(tools, the_pod) as drained_by:
        phases = stop_and_watch_phases(
            tools, the_pod.server, the_pod.state, "ready", deadline_s=DRAIN_DEADLINE_S
        )
        drained = drained_by(DRAIN_DEADLINE_S)
    print(f"{server.name} drain: {drained}")
    logs = the_pod.server.logs()
    assert drained["saw_unready"], drained
    assert drained["failed"] == 0 and drained["ok"] > 0, (drained, logs[-3000:])
    assert phases == ["ready", "draining", "stopped"], logs[-3000:]
    assert not marker.exists(), "the ready marker must be gone once draining starts"
    assert "draining: readiness fails now" in logs
    assert the_pod.server.state()["ExitCode"] == exitcodes.OK, logs[-3000:]
    assert probe_status(the_pod.sidecar, "/readyz", deadline_s=0) == 503
