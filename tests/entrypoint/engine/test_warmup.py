"""Warmup against real loopback servers: first vs steady, order, workers, budget, faults, progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.entrypoint.engine.conftest import FAST, ServerFactory, engine_config, shape
from warmgate.config import Config
from warmgate.entrypoint.engine.prover import Engine
from warmgate.state import Report, StateWriter

Prove = Callable[..., Awaitable[Report]]


def check(report: Report, name: str) -> Any:
    [found] = [c for c in report.gate.checks if c.name == name]
    return found


async def test_first_request_and_steady_state_are_recorded_per_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(first_delay={1: 0.15, 4: 0.25})
    config = engine_config(url, tmp_path, shapes=[shape("bs4", 4, count=4), shape("bs1", 1, count=4)])
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    # Smallest first, whatever the config order.
    assert [s.name for s in report.shapes] == ["bs1", "bs4"]
    bs1, bs4 = report.shapes
    assert bs1.first_s is not None and bs1.first_s >= 0.15
    assert bs4.first_s is not None and bs4.first_s >= 0.25
    for s in report.shapes:
        assert s.steady.count == 3
        assert s.steady.p50_s is not None and s.steady.p50_s < 0.1
        assert s.first_to_steady_ratio is not None and s.first_to_steady_ratio > 1.5
        assert s.post_warm_s is not None and s.post_warm_ratio is not None
        assert s.payload_bytes and s.errors == 0
    assert set(report.phases) >= {"warming", "load-testing", "post-warm-check"}
    assert report.load_test is not None and report.load_test.requests > 0


async def test_warmup_concurrency_reaches_every_lazy_worker(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # Two workers, each cold on its first request. One request at a time warms only one of them,
    # and the load test (concurrency 2) then pays the other's cold start. (Each request takes a
    # few ms, so that concurrent requests really overlap in the server.)
    shapes = [shape("bs1", 1, count=4)]
    load = {"duration_s": 0.3, "concurrency": 2}
    url, _ = await oip_server(workers=2, first_delay={None: 0.3}, delay=0.003)
    one_at_a_time = await prove(
        engine_config(url, tmp_path / "a", shapes=shapes, load_test=load, warmup={"concurrency": 1})
    )
    assert one_at_a_time.load_test is not None
    assert one_at_a_time.load_test.latency.max_s is not None and one_at_a_time.load_test.latency.max_s >= 0.3

    url, behaviour = await oip_server(workers=2, first_delay={None: 0.3}, delay=0.003)
    # Default warmup concurrency: server.workers.
    per_worker = await prove(
        engine_config(url, tmp_path / "b", shapes=shapes, load_test=load, server={"workers": 2})
    )
    assert per_worker.load_test is not None
    assert per_worker.load_test.latency.max_s is not None and per_worker.load_test.latency.max_s < 0.2
    assert behaviour.max_in_flight == 2
    [bs1] = per_worker.shapes
    assert bs1.first_s is not None and bs1.first_s >= 0.3


async def test_until_stable_keeps_going_until_latencies_settle(
    aiohttp_server: Any, prove: Prove, tmp_path: Path
) -> None:
    # Latency falls over the first requests (JIT-style), then flattens.
    delays = [0.2, 0.15, 0.1, 0.06, 0.03, 0.015]
    calls = 0

    async def infer(_request: web.Request) -> web.Response:
        nonlocal calls
        delay = delays[calls] if calls < len(delays) else 0.01
        calls += 1
        await asyncio.sleep(delay)
        return web.json_response(
            {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        )

    async def ready(_request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post("/v2/models/demo/infer", infer)
    # Readiness is asked while warming: a server that does not answer it is not ready.
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/demo/ready", ready)
    server = await aiohttp_server(app)
    stability = {"enabled": True, "window": 3, "tolerance": 0.25, "max_count": 40, "max_seconds": 10}
    config = engine_config(
        str(server.make_url("")).rstrip("/"),
        tmp_path,
        shapes=[shape("bs1", 1, count=2, until_stable=stability)],
        load_test={"enabled": False},
    )
    report = await prove(config)
    [bs1] = report.shapes
    assert bs1.stable is True
    assert calls >= len(delays) + 2  # it went past the count, through the slow phase
    assert calls < 40


async def test_until_stable_gives_up_at_its_bound(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server()
    stability = {"enabled": True, "window": 3, "tolerance": 0.0000001, "max_count": 8, "max_seconds": 10}
    config = engine_config(
        url, tmp_path, shapes=[shape("bs1", 1, count=2)], warmup={"until_stable": stability}
    )
    config = config.model_copy(update={"load_test": config.load_test.model_copy(update={"enabled": False})})
    report = await prove(config)
    [bs1] = report.shapes
    assert bs1.stable is False
    # max_count warmup requests, then the post-warm check's first request and its baseline.
    assert behaviour.calls[1] == 8 + 1 + FAST.post_warm_baseline


async def test_payload_over_budget_is_refused_before_anything_is_sent(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server()
    shapes = [shape("small", 1), shape("huge", 64, dims=(3, 64, 64))]
    report = await prove(engine_config(url, tmp_path, shapes=shapes, warmup={"max_payload_bytes": 1_000_000}))
    assert not report.gate.passed
    assert behaviour.total_calls == 0
    refused = check(report, "payload[huge]")
    assert refused.value == 64 * 3 * 64 * 64 * 4 and refused.threshold == 1_000_000
    assert report.gate.reason == (
        "shape huge: payload 3.0 MiB (estimated) exceeds warmup.max_payload_bytes 1.0 MiB; "
        "refused before sending"
    )


async def test_rejected_shape_names_shape_status_and_body(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(
        fail={4: (500, '{"error": "CUDA out of memory. Tried to allocate 2.00 GiB"}')}
    )
    report = await prove(engine_config(url, tmp_path))
    assert not report.gate.passed
    assert report.gate.reason == (
        f"shape bs4: HTTP 500 from POST {url}/v2/models/demo/infer: "
        '{"error": "CUDA out of memory. Tried to allocate 2.00 GiB"}'
    )
    _bs1, bs4 = report.shapes
    assert check(report, "warmup[bs1]").passed
    assert bs4.errors == 1 and bs4.error == report.gate.reason
    assert report.load_test is None  # no load test on a server that failed warmup
    assert behaviour.calls[4] == 1  # stopped at the first failure


async def test_hanging_server_fails_with_a_named_timeout(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(hang={4})
    report = await prove(engine_config(url, tmp_path, server={"request_timeout_s": 0.2}))
    assert report.gate.reason == (
        f"shape bs4: no response within 0.2s (server.request_timeout_s) from POST {url}/v2/models/demo/infer"
    )


async def test_connection_reset_fails_the_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(reset={1})
    report = await prove(engine_config(url, tmp_path))
    assert report.gate.reason.startswith(f"shape bs1: POST {url}/v2/models/demo/infer: ")
    assert check(report, "warmup[bs1]").passed is False


async def test_answer_without_outputs_fails_the_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(no_outputs={4})
    report = await prove(engine_config(url, tmp_path))
    assert report.gate.reason.startswith("shape bs4: response has no outputs: ")


async def test_progress_goes_to_status_json_and_the_log(
    oip_server: ServerFactory, session: aiohttp.ClientSession, tmp_path: Path, caplog: Any
) -> None:
    url, _ = await oip_server(delay=0.01)
    config = engine_config(url, tmp_path, load_test={"enabled": False})
    state = StateWriter(config.state_dir)
    state.prepare()
    seen: list[dict[str, Any]] = []
    original = state.set_progress

    def spy(done: int, total: int, detail: str = "") -> None:
        original(done, total, detail)
        seen.append(json.loads(state.status_path.read_text()))

    state.set_progress = spy  # type: ignore[method-assign]
    caplog.set_level("INFO", logger="warmgate")
    engine = Engine(config, session, state, tuning=FAST, gpu_reader=list, memory_limit=lambda: (None, ""))
    report = await engine.prove()
    assert report.gate.passed, report.gate.reason
    warming = [s for s in seen if s["phase"] == "warming"]
    assert warming, seen
    assert warming[-1]["progress"]["done"] == warming[-1]["progress"]["total"] == 6
    details = [s["progress"]["detail"] for s in warming]
    assert any(d.startswith("shape bs1 (1/2): request ") for d in details)
    assert any(d.startswith("shape bs4 (2/2): ") for d in details)
    assert "warmed shape bs1 (1/2): 3 requests, first" in caplog.text
    assert "gate passed:" in caplog.text and "warmup (smallest shape first):" in caplog.text


async def test_shapes_auto_reads_model_metadata(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(
        metadata_inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, -1]}]
    )
    config = engine_config(
        url, tmp_path, shapes="auto", auto_shapes={"batch_sizes": [1, 2], "count": 2, "dynamic_dim": 3}
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    assert [s.name for s in report.shapes] == ["auto-bs1", "auto-bs2"]
    assert set(behaviour.calls) == {1, 2}


async def test_shapes_auto_without_inputs_is_a_clear_failure(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(metadata_inputs=[])
    report = await prove(engine_config(url, tmp_path, shapes="auto"))
    assert not report.gate.passed
    assert report.gate.reason == (
        f"shapes: auto: GET {url}/v2/models/demo: model metadata lists no inputs; "
        "list shapes in warmup.yaml instead"
    )


async def test_no_shapes_means_health_alone(prove: Prove, tmp_path: Path) -> None:
    report = await prove(engine_config("http://127.0.0.1:9", tmp_path, shapes=[]))
    assert report.gate.passed
    assert report.gate.reason == "no shapes configured: readiness rests on health alone"


async def test_retry_policy_warms_again(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path, caplog: Any
) -> None:
    # The first bs4 request fails (a model still loading a kernel); warming again succeeds.
    url, _ = await oip_server(fail={4: (503, "loading")}, fail_when=lambda call: call <= 1)
    config: Config = engine_config(url, tmp_path, policy={"on_failure": "retry", "retries": 2})
    caplog.set_level("INFO", logger="warmgate")
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    assert report.attempts == 2
    assert "attempt 1 of 3 failed; warming again (policy retry):" in caplog.text
    assert "gate passed:" in caplog.text

    url, _ = await oip_server(fail={4: (503, "loading")})
    exhausted = await prove(engine_config(url, tmp_path / "b", policy={"on_failure": "retry", "retries": 1}))
    assert not exhausted.gate.passed and exhausted.attempts == 2
