"""The whole engine with `server.binary_tensors: true`: warmup, load test, post-warm check and the
concurrency check over Triton's binary tensor extension, against the loopback OIP server (which
decodes and encodes the extension with its own codec) and servers that answer it badly."""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from tests.entrypoint.engine.conftest import ServerFactory, engine_config, shape
from tests.entrypoint.engine.fakeserver import INFERENCE_HEADER
from warmgate.state import Report

Prove = Callable[..., Awaitable[Report]]
ServeApp = Callable[[web.Application], Awaitable[str]]
SHAPES = [shape("bs1", 1, count=2), shape("bs4", 4, count=2)]
LOAD = {"duration_s": 0.5, "concurrency": 4}
# Warmth is not what these tests are about: the fake shares the test's event loop, and on a loaded
# machine one post-warm request can pass the 3x ratio and fail a test about binary tensors.
GATE = {"max_first_to_steady_ratio": None}
BINARY = {"binary_tensors": True}


def binary_payload_bytes(batch: int) -> int:
    """What the engine sends for a batch of the conftest shape (FP32 input of dims [4]): the JSON
    header, then batch x 4 floats of 4 bytes."""
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": [batch, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": batch * 16},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    return len(json.dumps(header, separators=(",", ":"))) + batch * 16


async def test_binary_requests_and_answers_pass_the_gate(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(workers=4, delay=0.002)
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert report.gate.passed, report.gate.reason
    # Every inference request used the extension and was answered in binary.
    assert behaviour.total_calls > 20
    assert behaviour.binary_requests == behaviour.total_calls == behaviour.binary_answered
    assert [s.payload_bytes for s in report.shapes] == [binary_payload_bytes(1), binary_payload_bytes(4)]
    assert report.load_test is not None and report.load_test.errors == {}
    for s in report.shapes:
        check = s.concurrency_check
        assert check is not None and check.checked > 0 and check.mismatches == 0
        assert check.max_abs_deviation == 0.0


async def test_a_server_that_answers_binary_requests_in_json_passes(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(binary_answers=False)
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert report.gate.passed, report.gate.reason
    assert behaviour.binary_requests == behaviour.total_calls > 0
    assert behaviour.binary_answered == 0


async def test_the_concurrency_check_catches_an_unsafe_server_with_binary_answers(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(model="unsafe", workers=4)
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert not report.gate.passed
    assert behaviour.binary_answered == behaviour.total_calls
    failed = [c for c in report.gate.checks if not c.passed]
    assert failed and {c.name for c in failed} <= {"concurrency[bs1]", "concurrency[bs4]"}
    assert "the server is not safe under concurrency" in failed[0].detail
    check = next(
        s.concurrency_check for s in report.shapes if s.concurrency_check and s.concurrency_check.mismatches
    )
    assert check is not None and check.checked >= check.mismatches > 0


def broken_binary_app(answer: Callable[[int], tuple[bytes, bytes]]) -> web.Application:
    """An OIP server whose binary answers are built by `answer(batch)` -> (JSON header, tail)."""

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="")

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        header = json.loads(body[: int(request.headers[INFERENCE_HEADER])])
        json_header, tail = answer(header["inputs"][0]["shape"][0])
        return web.Response(body=json_header + tail, headers={INFERENCE_HEADER: str(len(json_header))})

    app = web.Application()
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/demo/ready"):
        app.router.add_get(path, ready)
    app.router.add_post("/v2/models/demo/infer", infer)
    return app


def output_header(shape: list[int], size: int) -> bytes:
    output = {"name": "output0", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}
    return json.dumps({"outputs": [output]}).encode()


async def test_a_binary_answer_whose_sizes_do_not_add_up_fails_warmup_in_one_line(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    def answer(batch: int) -> tuple[bytes, bytes]:
        # Declares the right size, then sends line breaks and a terminal escape after it.
        floats = struct.pack(f"<{batch * 4}f", *range(batch * 4))
        return output_header([batch, 4], len(floats)), floats + b"\r\n\x1b[2J"

    url = await serve_app(broken_binary_app(answer))
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert not report.gate.passed
    reason = report.gate.reason
    assert reason.startswith(
        "shape bs1: the outputs' binary_data_size add up to 16 bytes, the answer carries 22 after its "
        'JSON header: {"outputs": [{"name": "output0", "datatype": "FP32", "shape": [1, 4], '
    ), reason
    assert reason.endswith("(+22 bytes of binary data)"), reason
    assert reason.isprintable()
    assert report.load_test is None


async def test_a_binary_answer_for_another_batch_size_fails_warmup(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    # The server ran batch 1 whatever it was sent: well-formed binary, the wrong shape.
    floats = struct.pack("<4f", 1, 2, 3, 4)
    url = await serve_app(broken_binary_app(lambda _batch: (output_header([1, 4], 16), floats)))
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert not report.gate.passed
    assert report.gate.reason.startswith(
        "shape bs4: output output0: shape [1, 4] does not lead with the batch size 4: "
        "the server did not answer the shape that was sent: "
    ), report.gate.reason


async def test_binary_data_that_does_not_fit_its_shape_fails_warmup(
    serve_app: ServeApp, prove: Prove, tmp_path: Path
) -> None:
    def answer(batch: int) -> tuple[bytes, bytes]:
        return output_header([batch, 4], 8), b"\x00" * 8  # two floats for a batch x 4 tensor

    url = await serve_app(broken_binary_app(answer))
    report = await prove(
        engine_config(url, tmp_path, server=BINARY, shapes=SHAPES, load_test=LOAD, gate=GATE)
    )
    assert report.gate.reason.startswith(
        "shape bs1: output output0: 8 raw bytes cannot be a FP32 tensor of shape [1, 4] (16 bytes): "
    ), report.gate.reason
