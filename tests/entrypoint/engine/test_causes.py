"""Cause attribution (causes.py): each class against a loopback server that has exactly that
one-time cost, and warm servers that must get no cause at all."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.entrypoint.engine.conftest import ServerFactory, engine_config, shape
from tests.entrypoint.engine.fakeserver import Behaviour, make_app
from warmgate.entrypoint.report import format_report
from warmgate.state import Report, read_report

Prove = Callable[..., Awaitable[Report]]
pytestmark = pytest.mark.timeout(60)

# Every request takes this long, so that a few milliseconds of scheduling noise on a busy
# machine are far from the gate's 3x limit.
DELAY = 0.01
THREE = [shape("bs1", 1, count=4), shape("bs4", 4, count=4), shape("bs8", 8, count=4)]


def kinds(report: Report) -> list[str]:
    assert report.diagnosis is not None
    return [cause.kind for cause in report.diagnosis.causes]


def cause(report: Report, kind: str) -> Any:
    assert report.diagnosis is not None
    [found] = [c for c in report.diagnosis.causes if c.kind == kind]
    return found


async def test_a_warm_server_gets_no_cause(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    url, _ = await oip_server(delay=DELAY)
    report = await prove(engine_config(url, tmp_path, shapes=THREE))
    assert kinds(report) == []
    assert report.diagnosis is not None
    # What the probe compares traffic with: batch size and per-input dims, as the server labels them.
    assert [(w.batch_size, w.dims) for w in report.diagnosis.warmed] == [(1, "4"), (4, "4"), (8, "4")]
    assert "causes: none" in format_report(report)


async def test_warm_workers_get_no_cause_and_no_note(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    for header in (True, False):
        url, _ = await oip_server(delay=DELAY, workers=2, worker_header=header)
        config = engine_config(
            url, tmp_path / str(header), shapes=THREE, server={"workers": 2}, load_test={"concurrency": 2}
        )
        report = await prove(config)
        assert kinds(report) == []
        # Warm workers: nothing to tell apart, so no note about unnamed workers either.
        assert report.diagnosis is not None and report.diagnosis.notes == []


async def test_global_init_is_the_first_request_of_any_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, global_init_delay=0.4)
    report = await prove(engine_config(url, tmp_path, shapes=THREE))
    assert kinds(report) == ["global_init"]
    found = cause(report, "global_init")
    assert found.seconds >= 0.35
    assert "first request of any shape (bs1)" in found.evidence
    assert "every later shape's first request was within 3x of its steady state" in found.evidence
    assert "load eagerly" in found.mitigation
    text = format_report(report)
    assert "global init (" in text and "fix: " in text
    # A fake server publishes no trace: the report says the causes are inferred.
    assert report.diagnosis is not None
    assert any("no start-up trace" in note for note in report.diagnosis.notes)


async def test_global_init_and_per_shape_compile_together(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, global_init_delay=0.6, first_delay={4: 0.15})
    report = await prove(engine_config(url, tmp_path, shapes=THREE))
    assert kinds(report) == ["global_init", "per_shape_compile"]
    # The first shape's own compile is estimated as the typical cold later shape's.
    assert 0.35 <= cause(report, "global_init").seconds < 0.6
    compiled = cause(report, "per_shape_compile").evidence
    # bs1's cost is the global one's, so it is not listed as a warm shape; bs8 was warm.
    assert "bs4 " in compiled and "bs8 < 3x steady" in compiled and "bs1" not in compiled


async def test_per_shape_compile_names_each_cold_shape(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, first_delay={4: 0.3, 8: 0.2})
    report = await prove(engine_config(url, tmp_path, shapes=THREE))
    assert kinds(report) == ["per_shape_compile"]
    found = cause(report, "per_shape_compile")
    assert "bs4 " in found.evidence and "bs8 " in found.evidence
    assert "bs1 < 3x steady" in found.evidence
    assert 0.4 <= found.seconds < 1.0


async def test_a_first_shape_as_slow_as_the_others_is_a_compile_with_a_caveat(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, first_delay={1: 0.3, 4: 0.25})
    report = await prove(engine_config(url, tmp_path, shapes=THREE))
    assert kinds(report) == ["per_shape_compile"]
    evidence = cause(report, "per_shape_compile").evidence
    assert evidence.startswith("first request over steady state per shape: bs1 ")
    assert "bs1, the first shape, may also hold a one-time global start" in evidence


async def test_per_worker_init_when_the_server_names_its_workers(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, workers=2, worker_init_delay=0.3, worker_header=True)
    config = engine_config(url, tmp_path, shapes=THREE, server={"workers": 2}, load_test={"concurrency": 2})
    report = await prove(config)
    assert kinds(report) == ["per_worker_init"]
    assert "each of 2 of 2 workers" in cause(report, "per_worker_init").evidence


async def test_unnamed_workers_are_not_guessed(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, workers=2, worker_init_delay=0.3)
    config = engine_config(url, tmp_path, shapes=THREE, server={"workers": 2}, load_test={"concurrency": 2})
    report = await prove(config)
    assert "per_worker_init" not in kinds(report)
    assert report.diagnosis is not None
    assert any("does not name the worker" in note for note in report.diagnosis.notes)


async def test_allocator_growth_on_the_largest_batch(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # Calls 2-5 of batch 8 are slower, less so each time (pools growing), then it is flat.
    url, _ = await oip_server(delay=DELAY, cold_at_call={8: {2: 0.12, 3: 0.09, 4: 0.06, 5: 0.04}})
    shapes = [shape("bs1", 1, count=4), shape("bs8", 8, count=10)]
    report = await prove(engine_config(url, tmp_path, shapes=shapes))
    assert kinds(report) == ["allocator_growth"]
    assert "largest batch (bs8) fell from" in cause(report, "allocator_growth").evidence


async def test_slow_under_concurrency_beyond_queueing(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=DELAY, workers=4, contention_delay=0.08)
    config = engine_config(
        url,
        tmp_path,
        shapes=[shape("bs1", 1, count=4)],
        server={"workers": 4},
        warmup={"concurrency": 1},
        load_test={"concurrency": 4, "duration_s": 1.0},
    )
    report = await prove(config)
    assert kinds(report) == ["slow_under_concurrency"]
    found = cause(report, "slow_under_concurrency")
    assert found.seconds is None and "p95 at concurrency 4 is" in found.evidence


async def test_queueing_on_one_worker_is_not_slow_under_concurrency(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # One worker, concurrency 4: p95 is about 4x the serial one, which queueing explains.
    url, _ = await oip_server(delay=DELAY, workers=1)
    config = engine_config(url, tmp_path, shapes=[shape("bs1", 1, count=4)], load_test={"duration_s": 0.5})
    report = await prove(config)
    assert kinds(report) == []
    # Judged, not skipped for want of samples.
    assert report.load_test is not None and report.load_test.per_shape["bs1"].count >= 20


async def test_outlier_sequence_length(oip_server: ServerFactory, prove: Prove, tmp_path: Path) -> None:
    url, _ = await oip_server(delay=DELAY, first_delay_length={512: 0.3})
    shapes = [shape("s16", 1, dims=(16,)), shape("s32", 1, dims=(32,)), shape("s512", 1, dims=(512,))]
    report = await prove(engine_config(url, tmp_path, shapes=shapes))
    assert kinds(report) == ["outlier_length"]
    assert "s512 " in cause(report, "outlier_length").evidence


async def test_a_server_trace_is_merged_and_cited(aiohttp_server: Any, prove: Prove, tmp_path: Path) -> None:
    behaviour = Behaviour(delay=DELAY, first_delay={4: 0.3})
    app = make_app(behaviour)
    trace = {
        "schema_version": 1,
        "steps": [
            {"name": "weights read", "seconds": 0.12, "started_s": 0.0},
            {"name": "session build", "seconds": 0.3, "started_s": 0.12},
            {"name": "first inference bs4 dims 4", "seconds": 0.31, "started_s": 2.0},
        ],
    }

    async def startup(_request: web.Request) -> web.Response:
        return web.json_response(trace)

    app.router.add_get("/v2/warmgate/startup", startup)
    server = await aiohttp_server(app)
    report = await prove(engine_config(str(server.make_url("")).rstrip("/"), tmp_path, shapes=THREE))
    assert report.diagnosis is not None
    assert [step.name for step in report.diagnosis.startup] == [s["name"] for s in trace["steps"]]
    found = cause(report, "per_shape_compile")
    assert found.source == "server trace" and "first inference bs4 dims 4" in found.evidence
    assert report.diagnosis.notes == []
    assert "server start-up (GET http://" in format_report(report)


def test_a_report_written_before_the_diagnosis_still_reads(tmp_path: Path) -> None:
    document = {
        "instance_id": "x",
        "created_at": 0,
        "server_url": "http://127.0.0.1:8000",
        "protocol": "oip",
        "model": "demo",
        "gate": {"passed": True, "reason": "all checks passed"},
    }
    path = tmp_path / "ready.json"
    path.write_text(json.dumps(document))
    report = read_report(path)
    assert report.diagnosis is None
    assert "causes" not in format_report(report)
