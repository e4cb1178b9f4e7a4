"""/metrics with several workers: every scrape, whichever worker answers it, is the whole server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.modelserver.procs import ServerProcess
from tests.modelserver.test_server import demo_request
from warmgate.modelserver.app import WORKER_HEADER

StartServer = Callable[..., ServerProcess]
DEADLINE_S = 30.0
WORKERS = 3
REQUESTS = 30
SCRAPES = 40
PREFIX = "warmgate_modelserver_"


def fresh_connections() -> aiohttp.ClientSession:
    # SO_REUSEPORT spreads connections, not requests: a new connection per request reaches every worker.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def infer(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(f"{url}/v2/models/demo/infer", json=demo_request(1)[1]) as response:
        assert response.status == 200
        return response.headers[WORKER_HEADER]


async def scrape(session: aiohttp.ClientSession, url: str) -> tuple[str, dict[tuple[str, frozenset], float]]:
    """(the worker that answered, {(sample name, labels): value})."""
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
        worker = response.headers[WORKER_HEADER]
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return worker, samples


def requests_ok(samples: dict[tuple[str, frozenset], float]) -> float:
    return samples.get((f"{PREFIX}requests_total", frozenset({("model", "demo"), ("code", "200")})), 0.0)


def latency_count(samples: dict[tuple[str, frozenset], float]) -> float:
    key = (f"{PREFIX}request_duration_seconds_count", frozenset({("model", "demo"), ("batch_size", "1")}))
    return samples.get(key, 0.0)


def worker_labels(samples: dict[tuple[str, frozenset], float]) -> set[str]:
    return {dict(labels)["worker"] for name, labels in samples if name == f"{PREFIX}worker_info"}


def metrics_dirs(processes: list[psutil.Process]) -> set[Path]:
    """The directories holding the metric files these processes have open."""
    paths = (Path(f.path) for p in processes for f in p.open_files())
    return {path.parent for path in paths if path.parent.name.startswith("warmgate-modelserver-metrics-")}


@pytest.mark.timeout(180)
async def test_every_scrape_sees_every_worker_and_counters_never_decrease(start_server: StartServer) -> None:
    server = start_server("--demo", "--workers", str(WORKERS))
    url = server.wait_ready()
    parent = psutil.Process(server.pid)
    workers = {str(child.pid) for child in parent.children()}
    assert len(workers) == WORKERS
    (shared,) = metrics_dirs(parent.children())  # one directory, written by every worker
    assert shared.name.startswith("warmgate-modelserver-metrics-")

    async with fresh_connections() as session:
        # Counters grow request by request, whichever worker answers the scrape in between.
        answered_by: set[str] = set()
        for sent in range(1, REQUESTS + 1):
            answered_by.add(await infer(session, url))
            _, samples = await scrape(session, url)
            assert requests_ok(samples) == sent
            assert latency_count(samples) == sent
        # Without this the test could not fail: one worker alone would already count every request.
        assert answered_by == workers

        scraped_by: set[str] = set()
        for _ in range(SCRAPES):
            worker, samples = await scrape(session, url)
            scraped_by.add(worker)
            assert requests_ok(samples) == REQUESTS, f"worker {worker} saw {requests_ok(samples)}"
            assert latency_count(samples) == REQUESTS
            assert worker_labels(samples) == workers
            assert samples[(f"{PREFIX}ready", frozenset())] == 1
            assert samples[(f"{PREFIX}in_flight_requests", frozenset())] == 0
        assert len(scraped_by) > 1

    # A worker that dies takes its live gauges with it but not its counts.
    victim = sorted(workers)[0]
    os.kill(int(victim), signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    async with fresh_connections() as session:
        while True:
            current = {str(child.pid) for child in parent.children()}
            _, samples = await scrape(session, url)
            assert requests_ok(samples) == REQUESTS
            replaced = len(current) == WORKERS and victim not in current and worker_labels(samples) == current
            if replaced and samples[(f"{PREFIX}ready", frozenset())] == 1:
                break
            assert time.monotonic() < deadline, server.output
            await asyncio.sleep(0.05)  # poll interval, not synchronisation
        await infer(session, url)
        for _ in range(SCRAPES // 4):
            _, samples = await scrape(session, url)
            assert requests_ok(samples) == REQUESTS + 1

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not shared.exists(), "the metrics directory is removed at exit"


async def test_a_single_process_server_keeps_its_own_registry(start_server: StartServer) -> None:
    server = start_server("--demo")
    url = server.wait_ready()
    assert metrics_dirs([psutil.Process(server.pid)]) == set()
    async with fresh_connections() as session:
        worker = await infer(session, url)
        _, samples = await scrape(session, url)
    assert requests_ok(samples) == 1
    assert worker_labels(samples) == {worker}


def test_a_scrape_skips_a_worker_file_not_sized_yet() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from warmgate.modelserver.metrics import ServerMetrics, multiprocess_metrics, worker_exited

    with multiprocess_metrics() as directory:
        # Another worker has just created its file and not yet sized it.
        (directory / "counter_999999.db").touch()
        metrics = ServerMetrics(CollectorRegistry(), worker="1", multiprocess_dir=directory)
        metrics.requests.labels("demo", "200").inc(2)
        metrics.ready.set(1)
        text = generate_latest(metrics.registry).decode()
        assert 'warmgate_modelserver_requests_total{code="200",model="demo"} 2.0' in text
        assert "warmgate_modelserver_ready 1.0" in text
        worker_exited(directory, os.getpid())
        text = generate_latest(metrics.registry).decode()
        assert 'warmgate_modelserver_requests_total{code="200",model="demo"} 2.0' in text
        assert "warmgate_modelserver_ready " not in text
    assert not directory.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
