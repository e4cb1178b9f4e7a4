"""The concurrency safety check: answers under concurrent load against answers given one at a time.

A server that shares one output buffer across requests answers correctly one request at a time
and swaps answers only when requests overlap; no latency check notices. These tests run the engine
against such a server, its fixed twin, a server with float jitter, a sampling model, a custom HTTP
server, and the reference model server in its worker modes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.entrypoint.engine.conftest import ServerFactory, engine_config, shape
from tests.support.procs import Proc
from warmgate.state import GateCheck, Report

Prove = Callable[..., Awaitable[Report]]
SHAPES = [shape("bs1", 1, count=2), shape("bs4", 4, count=2)]
LOAD = {"duration_s": 0.5, "concurrency": 4}
# Warmth is not what these tests are about: the fake servers share the test's event loop, and on a
# loaded machine one post-warm request can pass the 3x ratio and fail a test about concurrency.
GATE = {"max_first_to_steady_ratio": None}


def by_name(report: Report, name: str) -> GateCheck:
    [found] = [c for c in report.gate.checks if c.name == name]
    return found


async def test_a_server_unsafe_under_concurrency_fails_naming_the_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # Four threads sharing one model instance and its output buffer.
    url, _ = await oip_server(model="unsafe", workers=4)
    report = await prove(engine_config(url, tmp_path, shapes=SHAPES, load_test=LOAD, gate=GATE))
    assert not report.gate.passed
    failed = [c for c in report.gate.checks if not c.passed]
    assert {c.name for c in failed} <= {"concurrency[bs1]", "concurrency[bs4]"} and failed
    detail = failed[0].detail
    assert re.match(
        r"shape bs(1|4): the server is not safe under concurrency: \d+ of \d+ answers at concurrency 4 "
        r"differed from the answers to the same inputs sent one at a time \(first: request \d+ \(input \d\), "
        # A blend of a batch-1 and a batch-4 answer: another element, another length, or (when the
        # shared buffer was resized under it) a declared shape that its own data does not fill.
        r"output output0(\[\d+\]: expected [-\d.e]+, got [-\d.e]+| *: \d+ values, expected \d+"
        r"|: shape \[\d, 4\] holds \d+ values, data has \d+)\)$",
        detail,
    ), detail
    assert report.gate.reason.startswith("shape bs")
    # Warmup itself was fine: one request at a time, the unsafe server answers correctly.
    assert by_name(report, "warmup[bs1]").passed and by_name(report, "warmup[bs4]").passed
    check = report.shapes[0].concurrency_check
    assert check is not None and check.mismatches > 0 and check.checked >= check.mismatches
    assert check.first_mismatch and check.max_abs_deviation is not None and check.max_abs_deviation > 0


async def test_the_same_server_with_the_bug_fixed_passes(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # Same timing as the unsafe one (requests overlap), but each request keeps its own buffer.
    url, behaviour = await oip_server(model="safe", delay=0.002, workers=4)
    report = await prove(engine_config(url, tmp_path, shapes=SHAPES, load_test=LOAD, gate=GATE))
    assert report.gate.passed, report.gate.reason
    assert behaviour.max_in_flight == 4
    for s in report.shapes:
        check = s.concurrency_check
        assert check is not None and not check.skipped
        assert check.variants == 4 and check.checked > 10 and check.mismatches == 0
        assert check.max_abs_deviation == 0.0


async def test_tiny_float_jitter_passes_within_tolerance(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(model="jitter", workers=4)
    report = await prove(engine_config(url, tmp_path / "a", shapes=SHAPES, load_test=LOAD, gate=GATE))
    assert report.gate.passed, report.gate.reason
    check = report.shapes[0].concurrency_check
    assert check is not None and check.checked > 0 and check.mismatches == 0
    assert check.max_abs_deviation is not None and 0 < check.max_abs_deviation < 1e-5

    exact = await prove(
        engine_config(
            url, tmp_path / "b", shapes=SHAPES, load_test=LOAD, concurrency_check={"rtol": 0, "atol": 0}
        )
    )
    assert not exact.gate.passed  # with no tolerance, even the sequential answers differ


async def test_a_sampling_model_opted_out_passes_and_one_not_opted_out_is_told_how(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(model="sampling")
    opted_out = [shape("bs1", 1, count=2, compare=False)]
    report = await prove(engine_config(url, tmp_path / "a", shapes=opted_out, load_test=LOAD, gate=GATE))
    assert report.gate.passed, report.gate.reason
    check = report.shapes[0].concurrency_check
    assert check is not None and check.skipped == "compare: false on this shape (non-deterministic model)"
    assert not [c for c in report.gate.checks if c.name.startswith("concurrency")]

    not_opted_out = await prove(
        engine_config(url, tmp_path / "b", shapes=[shape("bs1", 1)], load_test=LOAD, gate=GATE)
    )
    assert not not_opted_out.gate.passed
    detail = by_name(not_opted_out, "concurrency[bs1]").detail
    assert detail.startswith(
        "shape bs1: the same input sent twice, one request at a time, got different answers "
        "(output output0[0]: "
    )
    assert detail.endswith(
        "the model is not deterministic; set `compare: false` on this shape to skip the concurrency check"
    )


def custom_app(unsafe: bool) -> web.Application:
    """A FastAPI-style server: {"inputs": {...}} in, {"result": {"scores": [...]}} out."""
    shared: list[float] = []

    async def predict(request: web.Request) -> web.Response:
        document = await request.json()
        rows = document["inputs"]["input"]
        scores = [sum(row) for row in rows]
        if unsafe:
            shared[:] = scores
            await asyncio.sleep(0.002)
            scores = list(shared)
        else:
            await asyncio.sleep(0.002)
        return web.json_response({"result": {"scores": scores}, "request_id": id(request)})

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/health", health)
    return app


async def test_http_template_compares_the_named_fields(
    serve_app: Callable[[web.Application], Awaitable[str]], prove: Prove, tmp_path: Path
) -> None:
    def config(url: str, name: str, **http: Any) -> Any:
        server = {
            "protocol": "http",
            "health_path": "/health",
            "http": {"path": "/predict", "body": {"inputs": "{{payload}}"}, **http},
        }
        return engine_config(url, tmp_path / name, server=server, shapes=SHAPES, load_test=LOAD, gate=GATE)

    unsafe_url = await serve_app(custom_app(unsafe=True))
    # Without output_fields there is nothing to compare: the check is skipped, and says why.
    unchecked = await prove(config(unsafe_url, "a"))
    assert unchecked.gate.passed, unchecked.gate.reason
    skipped = unchecked.shapes[0].concurrency_check
    assert skipped is not None and skipped.skipped == "protocol http without server.http.output_fields"

    # Naming the field that carries the answer (not request_id, which differs every time).
    checked = await prove(config(unsafe_url, "b", output_fields=["result.scores"]))
    assert not checked.gate.passed
    assert "the server is not safe under concurrency" in checked.gate.reason

    safe_url = await serve_app(custom_app(unsafe=False))
    assert (await prove(config(safe_url, "c", output_fields=["result.scores"]))).gate.passed


# ---- the reference model server -----------------------------------------------------------------

MODELSERVER_MISSING = importlib.util.find_spec("warmgate.modelserver.cli") is None or (
    importlib.util.find_spec("onnxruntime") is None
)
READY = re.compile(r"ready: (http://\S+)")


@pytest.fixture(scope="module")
def modelserver_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modelserver-cache")


@pytest.fixture
def modelserver(modelserver_cache: Path) -> Iterator[Callable[..., str]]:
    started: list[Proc] = []

    def start(*args: str) -> str:
        argv = [sys.executable, "-m", "warmgate", "serve", "--demo", "--host", "127.0.0.1", "--port", "0",
                "--cache-dir", str(modelserver_cache), *args]  # fmt: skip
        proc = Proc(argv)
        started.append(proc)
        match = READY.search(proc.expect("warmgate modelserver ready:", timeout=90))
        assert match is not None
        return match.group(1)

    yield start
    for proc in started:
        proc.close()


@pytest.mark.skipif(
    MODELSERVER_MISSING, reason="modelserver (warmgate serve) or onnxruntime is not installed"
)
@pytest.mark.parametrize(
    "mode",
    [("--workers", "2", "--concurrency", "1"), ("--workers", "1", "--concurrency", "2")],
    ids=["2-processes", "1-process-2-threads"],
)
async def test_warmgate_serve_gives_the_same_answers_under_concurrency(
    modelserver: Callable[..., str], prove: Prove, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    url = modelserver(*mode)
    demo = {"input": {"datatype": "FP32", "dims": [3, 64, 64], "data": "random"}}
    shapes = [
        {"name": "bs1", "batch_size": 1, "inputs": demo, "count": 2},
        {"name": "bs2", "batch_size": 2, "inputs": demo, "count": 2},
    ]
    config = engine_config(
        url,
        tmp_path,
        shapes=shapes,
        server={"workers": 2, "request_timeout_s": 30},
        # Concurrency above the worker count, so requests queue and overlap inside the server.
        load_test={"duration_s": 1.5, "concurrency": 4},
        gate={"max_first_to_steady_ratio": None},
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    for s in report.shapes:
        check = s.concurrency_check
        assert check is not None and not check.skipped
        assert check.checked > 0 and check.mismatches == 0, check
