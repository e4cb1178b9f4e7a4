"""The engine over protocol oip-grpc, unchanged: warmup, load test, post-warm and gate through the
adapter, against the fake gRPC server (fakegrpcserver.py) in-process, and `warmgate run --once`
over it as a real process for the server dying mid-warmup. The HTTP twins of these tests are in
test_concurrency_check.py and test_run_end_to_end.py; the wording must be the same."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.entrypoint.engine.conftest import engine_config, shape
from tests.entrypoint.engine.fakegrpcserver import GrpcBehaviour, serving_in_thread
from tests.support.procs import WARMGATE, Proc, free_port, warmgate_env
from warmgate import exitcodes
from warmgate.state import Report

pytestmark = pytest.mark.timeout(60)

Prove = Callable[..., Awaitable[Report]]
GrpcFactory = Callable[..., Awaitable[tuple[str, GrpcBehaviour]]]
FAKE_GRPC_SERVER = str(Path(__file__).with_name("fakegrpcserver.py"))
SHAPES = [shape("bs1", 1, count=2), shape("bs4", 4, count=2)]
LOAD = {"duration_s": 0.5, "concurrency": 4}


@pytest.fixture
def grpc_server() -> Iterator[GrpcFactory]:
    """Start the fake gRPC server with the given behaviour on its own thread and loop; returns
    (grpc:// URL, behaviour)."""
    with contextlib.ExitStack() as servers:

        async def start(**behaviour: Any) -> tuple[str, GrpcBehaviour]:
            state = GrpcBehaviour(**behaviour)
            port = servers.enter_context(serving_in_thread(state))
            return f"grpc://127.0.0.1:{port}", state

        yield start


def grpc_config(url: str, state_dir: Path, **sections: Any) -> Any:
    server = {"protocol": "oip-grpc", **sections.pop("server", {})}
    # Warmth is not what these tests are about: on a loaded machine one post-warm request of a
    # millisecond fake can pass the 3x ratio and fail a test about the protocol.
    sections.setdefault("gate", {"max_first_to_steady_ratio": None})
    return engine_config(url, state_dir, server=server, **sections)


async def test_warmup_load_test_and_gate_pass_over_grpc(
    grpc_server: GrpcFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await grpc_server(first_delay=0.05)
    report = await prove(grpc_config(url, tmp_path, shapes=SHAPES, load_test=LOAD))
    assert report.gate.passed, report.gate.reason
    assert report.protocol == "oip-grpc"
    assert [s.name for s in report.shapes] == ["bs1", "bs4"]
    assert all(s.first_s is not None and s.first_s >= 0.05 for s in report.shapes)
    assert report.load_test is not None and report.load_test.requests > 10 and not report.load_test.errors
    for s in report.shapes:
        check = s.concurrency_check
        assert check is not None and check.checked > 0 and check.mismatches == 0
    assert behaviour.calls[1] > 2 and behaviour.calls[4] > 2


async def test_the_concurrency_check_catches_an_unsafe_server_over_grpc(
    grpc_server: GrpcFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await grpc_server(model="unsafe")
    report = await prove(grpc_config(url, tmp_path, shapes=SHAPES, load_test=LOAD))
    assert not report.gate.passed
    failed = [c for c in report.gate.checks if not c.passed]
    assert {c.name for c in failed} <= {"concurrency[bs1]", "concurrency[bs4]"} and failed
    detail = failed[0].detail
    # Worded as over HTTP (test_concurrency_check.py).
    assert re.match(
        r"shape bs(1|4): the server is not safe under concurrency: \d+ of \d+ answers at concurrency 4 "
        r"differed from the answers to the same inputs sent one at a time \(first: request \d+ \(input \d\), "
        r"output output0(\[\d+\]: expected [-\d.e]+, got [-\d.e]+| *: \d+ values, expected \d+"
        # The blend as the raw-contents decoder words it: the shared buffer's size is another shape's.
        r"|: \d+ raw bytes cannot be a FP32 tensor of shape \[\d, 4\] \(\d+ bytes\))\)$",
        detail,
    ), detail


async def test_a_failing_shape_fails_the_gate_with_the_grpc_status_and_details(
    grpc_server: GrpcFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await grpc_server(fail={4: (grpc.StatusCode.INVALID_ARGUMENT, "input has wrong shape [4, 4]")})
    report = await prove(grpc_config(url, tmp_path, shapes=SHAPES, load_test=LOAD))
    assert not report.gate.passed
    assert report.gate.reason == (
        f"shape bs4: gRPC INVALID_ARGUMENT: input has wrong shape [4, 4] from {url}"
        "/inference.GRPCInferenceService/ModelInfer"
    )


async def test_shapes_auto_come_from_model_metadata(
    grpc_server: GrpcFactory, prove: Prove, tmp_path: Path
) -> None:
    inputs = [{"name": "input", "datatype": "FP32", "shape": [-1, 3, -1]}]
    url, behaviour = await grpc_server(metadata_inputs=inputs)
    config = grpc_config(
        url,
        tmp_path,
        shapes="auto",
        auto_shapes={"batch_sizes": [1, 2], "dynamic_dim": 5, "count": 2},
        load_test=LOAD,
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    assert [s.name for s in report.shapes] == ["auto-bs1", "auto-bs2"]
    assert set(behaviour.calls) == {1, 2}


def test_a_grpc_server_dying_mid_warmup_ends_the_run_with_its_exit_code(tmp_path: Path) -> None:
    port = free_port()
    state_dir = tmp_path / "state"
    config = {
        "server": {
            "url": f"grpc://127.0.0.1:{port}",
            "protocol": "oip-grpc",
            "model": "demo",
            "start_timeout_s": 30,
        },
        "shapes": [
            {"name": "bs1", "batch_size": 1, "inputs": {"input": {"dims": [4]}}, "count": 3},
            {"name": "bs4", "batch_size": 4, "inputs": {"input": {"dims": [4]}}, "count": 3},
        ],
        "load_test": {"duration_s": 0.3, "concurrency": 2},
        "state_dir": str(state_dir),
        "drain": {"quiet_period_s": 0.2, "grace_period_s": 5},
    }
    path = tmp_path / "warmup.yaml"
    path.write_text(yaml.safe_dump(config))
    server = [sys.executable, FAKE_GRPC_SERVER, "--port", str(port), "--die-after", "2", "--die-code", "3"]
    proc = Proc([*WARMGATE, "run", "--once", "-c", str(path), "--", *server], env=warmgate_env())
    try:
        assert proc.wait(60) == 3, proc.output
    finally:
        proc.close()
    assert "server exited during warming: exit code 3" in proc.output
    assert "Traceback" not in proc.output and "gate failed" not in proc.output
    assert not (state_dir / "ready.json").exists()
    assert proc.wait(1) != exitcodes.OK
