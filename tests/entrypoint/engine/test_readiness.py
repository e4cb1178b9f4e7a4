"""Readiness lost while warming or load testing fails the attempt (issue 12, item 7): real
loopback servers whose readiness endpoint turns 503 after a given inference request."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.entrypoint.engine.conftest import FAST, ServerFactory, engine_config, shape
from tests.entrypoint.engine.test_run_end_to_end import run_once
from warmgate import exitcodes
from warmgate.entrypoint.engine.connections import client_session
from warmgate.entrypoint.engine.prover import Engine
from warmgate.state import GateCheck, Report, StateWriter

Prove = Callable[..., Awaitable[Report]]

# Warmup long enough for the watcher (every 0.05 s in tests, two failures in a row) to notice:
# 40 requests of 10 ms each.
SLOW_WARMUP = [shape("bs1", 1, count=40, compare=False)]


def readiness_check(report: Report) -> GateCheck:
    [found] = [c for c in report.gate.checks if c.name == "readiness"]
    return found


async def test_readiness_lost_mid_warmup_fails_the_attempt(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, behaviour = await oip_server(delay=0.01, unready_after=5)
    report = await prove(engine_config(url, tmp_path, shapes=SLOW_WARMUP))
    assert not report.gate.passed
    check = readiness_check(report)
    assert not check.passed
    assert check.detail.startswith("server readiness lost during warming: GET http://127.0.0.1:")
    assert "/ready: HTTP 503 model unloading" in check.detail
    assert report.gate.reason == check.detail and "\n" not in check.detail
    # The warmup stopped there: no load test, no post-warm request, far fewer than 40 requests.
    assert report.load_test is None and report.shapes[0].post_warm_s is None
    assert behaviour.total_calls < 30


async def test_readiness_lost_during_the_load_test_fails_the_attempt(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # bs1's warmup is 3 requests; readiness goes from its 10th request, in a 30 s load test.
    url, _ = await oip_server(delay=0.002, unready_after=10)
    config = engine_config(
        url, tmp_path, shapes=[shape("bs1", 1, compare=False)], load_test={"duration_s": 30, "concurrency": 2}
    )
    report = await prove(config)
    check = readiness_check(report)
    assert check.detail.startswith("server readiness lost during the load test: GET ")
    assert "HTTP 503" in check.detail
    assert report.load_test is None
    assert report.phases["load-testing"] < 5


async def test_with_retry_the_next_attempt_waits_for_readiness_and_runs(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Readiness is 503 for 0.5 s from the 5th request on: attempt 1 fails, attempt 2 waits for
    # the server to be ready again, then warms it from the start and passes.
    url, behaviour = await oip_server(delay=0.01, unready_after=5, unready_for_s=0.5)
    config = engine_config(url, tmp_path, shapes=SLOW_WARMUP, policy={"on_failure": "retry", "retries": 1})
    with caplog.at_level(logging.INFO, logger="warmgate.engine"):
        report = await prove(config)
    assert report.gate.passed, report.gate.reason
    assert report.attempts == 2
    assert "server readiness lost during warming: GET " in caplog.text
    assert "attempt 1 of 2 failed; warming again (policy retry)" in caplog.text
    assert report.shapes[0].requests >= 40 and behaviour.total_calls > 40


async def test_with_retry_a_server_that_stays_unready_fails_within_its_start_timeout(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    url, _ = await oip_server(delay=0.01, unready_after=5)
    config = engine_config(
        url,
        tmp_path,
        shapes=SLOW_WARMUP,
        server={"start_timeout_s": 0.5},
        policy={"on_failure": "retry", "retries": 1},
    )
    report = await prove(config)
    assert report.attempts == 2
    check = readiness_check(report)
    assert check.detail.startswith(
        "server readiness lost during the wait before a retry: not ready again within 0.5s: GET "
    )


async def test_one_failed_readiness_check_is_not_a_verdict(
    oip_server: ServerFactory, prove: Prove, tmp_path: Path
) -> None:
    # 503 for 30 ms, shorter than the 50 ms between checks: at most one check sees it.
    url, _ = await oip_server(delay=0.01, unready_after=5, unready_for_s=0.03)
    report = await prove(engine_config(url, tmp_path, shapes=SLOW_WARMUP))
    assert report.gate.passed, report.gate.reason


def test_warmgate_run_exits_gate_failed_when_readiness_drops_mid_warmup(tmp_path: Path) -> None:
    """The whole program, over a real server process: exit 80, one-line reason, no marker.
    (Default tuning: readiness asked every 0.5 s, so the warmup lasts several seconds.)"""
    shapes = {"shapes": [{"name": "bs1", "batch_size": 1, "inputs": {"input": {"dims": [4]}}, "count": 400}]}
    proc, state_dir = run_once(tmp_path, "--delay", "0.02", "--unready-after", "5", **shapes)
    try:
        assert proc.wait(60) == exitcodes.GATE_FAILED, proc.output
    finally:
        proc.close()
    assert "gate failed: server readiness lost during warming: GET http://127.0.0.1:" in proc.output
    assert "Traceback" not in proc.output
    assert not (state_dir / "ready.json").exists()


async def test_a_load_test_using_every_connection_leaves_room_for_the_readiness_check(
    oip_server: ServerFactory, tmp_path: Path
) -> None:
    # 120 requests of 0.3 s always in flight. Were the pool exactly 120, each readiness check
    # would wait for a connection longer than its 0.15 s timeout and readiness would look lost.
    url, behaviour = await oip_server(delay=0.3, workers=120)
    config = engine_config(
        url,
        tmp_path,
        shapes=[shape("bs1", 1, count=1, compare=False)],
        load_test={"duration_s": 1.0, "concurrency": 120},
    )
    state = StateWriter(config.state_dir)
    state.prepare()
    tuning = dataclasses.replace(FAST, readiness_timeout_s=0.15)
    async with client_session(config) as session:
        engine = Engine(
            config, session, state, tuning=tuning, gpu_reader=list, memory_limit=lambda: (None, "")
        )
        report = await engine.prove()
    assert report.gate.passed, report.gate.reason
    assert behaviour.max_in_flight == 120
