"""From the config to the probe's settings (probe/planning.py), and the settings across the exec
(probe/settings.py, probe/launch.py): what each protocol's probe checks, and that the serving
process refuses anything `warmgate probe` did not hand it, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from warmgate.config import validate_config
from warmgate.errors import ConfigError
from warmgate.probe.launch import LAUNCH_MAX_BYTES, SERVE_COMMAND, read_launch, serving_argv
from warmgate.probe.planning import probe_settings
from warmgate.probe.settings import Launch, Listen, ProbeSettings
from warmgate.protocols.readiness import BodyCheck, Endpoint

pytestmark = pytest.mark.timeout(60)


def settings_for(tmp_path: Path, **server: Any) -> ProbeSettings:
    raw = {
        "state_dir": str(tmp_path / "state"),
        "server": {"url": "http://127.0.0.1:8000", "model": "m", "command": ["unused"], **server},
        "probe": {"readiness_gate": {"enabled": True, "condition_type": "example.com/warm"}},
    }
    return probe_settings(validate_config(raw, "test", {}))


def test_each_protocol_names_its_endpoints_and_body_checks(tmp_path: Path) -> None:
    oip = settings_for(tmp_path, protocol="oip")
    assert oip.ready_endpoints == (
        Endpoint("http://127.0.0.1:8000/v2/health/ready"),
        Endpoint("http://127.0.0.1:8000/v2/models/m/ready"),
    )
    assert oip.live_endpoint == Endpoint("http://127.0.0.1:8000/v2/health/live")
    assert oip.server_metrics_url == "http://127.0.0.1:8000/metrics"
    assert (oip.state_dir, oip.readiness_gate, oip.condition_type) == (
        tmp_path / "state", True, "example.com/warm",
    )  # fmt: skip
    tf = settings_for(tmp_path, protocol="tfserving")
    assert tf.ready_endpoints == (
        Endpoint("http://127.0.0.1:8000/v1/models/m", BodyCheck("model-available")),
    )
    assert tf.server_metrics_url is None
    llm = settings_for(tmp_path, protocol="openai", openai={"family": "vllm"})
    assert llm.ready_endpoints[-1] == Endpoint(
        "http://127.0.0.1:8000/v1/models", BodyCheck("lists-model", "m")
    )
    assert all(each.checks_over_http for each in (oip, tf, llm))
    custom = settings_for(tmp_path, protocol="torchserve", health_path="/up", live_path="/alive")
    assert custom.ready_endpoints == (Endpoint("http://127.0.0.1:8000/up"),)
    assert custom.live_endpoint == Endpoint("http://127.0.0.1:8000/alive")


def test_a_grpc_server_is_checked_through_its_adapter_not_over_http(tmp_path: Path) -> None:
    grpc = settings_for(tmp_path, protocol="oip-grpc", url="grpc://127.0.0.1:8001")
    assert not grpc.checks_over_http
    assert (grpc.ready_endpoints, grpc.live_endpoint) == ((), None)


def test_the_launch_round_trips_and_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    launch = Launch(settings_for(tmp_path, protocol="openai"), Listen("0.0.0.0", 8086, 2.0), 10)
    assert Launch.decode(launch.encode()) == launch
    document = json.loads(launch.encode())
    for broken, problem in [
        (b"not json", "malformed"),
        (launch.encode().replace(b'"lists-model"', b'"exec-something"'), "body_check.rule"),
        (
            json.dumps(
                {**document, "settings": {**document["settings"], "check_timeout_s": "soon"}}
            ).encode(),
            "Expected `float`, got `str` - at `$.settings.check_timeout_s`",
        ),
        (b"{}", "missing required field `settings`"),
    ]:
        with pytest.raises(ConfigError, match="the probe's launch settings are not usable") as caught:
            Launch.decode(broken)
        assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_read_launch_takes_only_a_descriptor_it_was_handed(tmp_path: Path) -> None:
    launch = Launch(settings_for(tmp_path, protocol="oip"), Listen("127.0.0.1", 0, 0.0))
    read, write = os.pipe()
    os.write(write, launch.encode())
    os.close(write)
    assert read_launch(["--launch-fd", str(read)]) == launch  # and the descriptor is closed
    with pytest.raises(OSError):
        os.fstat(read)
    with pytest.raises(ConfigError, match=r"run `warmgate probe` \(descriptor 987: Bad file descriptor\)"):
        read_launch(["--launch-fd", "987"])
    big = tmp_path / "big"
    big.write_bytes(b" " * (LAUNCH_MAX_BYTES + 1))
    with big.open("rb") as source, pytest.raises(ConfigError, match="over 1048576 bytes"):
        read_launch(["--launch-fd", str(os.dup(source.fileno()))])
    with pytest.raises(ConfigError, match="unexpected arguments --port 1"):
        read_launch(["--launch-fd", "3", "--port", "1"])


def test_the_serving_command_alone_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "warmgate", SERVE_COMMAND, "--launch-fd", "987"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"warmgate: {SERVE_COMMAND} serves what `warmgate probe` hands it; run `warmgate probe` "
        "(descriptor 987: Bad file descriptor)"
    ]


def test_the_bundle_execs_itself_and_python_runs_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serving_argv(7) == [sys.executable, "-m", "warmgate", SERVE_COMMAND, "--launch-fd", "7"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert serving_argv(7) == [sys.executable, SERVE_COMMAND, "--launch-fd", "7"]
