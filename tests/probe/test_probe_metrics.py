"""/metrics: the report as gauges, readiness, the probe's own traffic; valid for promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import full_report
from warmgate.probe.metrics import MetricsInput, build_registry, report_families
from warmgate.probe.state_view import StateView
from warmgate.state import (
    GateCheck,
    GateVerdict,
    LatencyStats,
    MemoryReport,
    Phase,
    ShapeReport,
    StateWriter,
)

pytestmark = pytest.mark.timeout(30)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: Any, accept: str | None = None) -> tuple[str, Samples]:
    headers = {"Accept": accept} if accept else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200
    text = await response.text()
    parse = parse_openmetrics if accept else text_string_to_metric_families
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def make_ready(writer: StateWriter, **changes: Any) -> None:
    writer.write_ready(full_report(writer.instance_id, **changes))
    writer.set_phase(Phase.READY, "ready")


async def test_report_gauges(config: Any, writer: StateWriter, make_probe: ProbeFactory) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    await client.get("/readyz")
    _, samples = await scrape(client)

    assert value(samples, "warmgate_ready") == 1
    assert value(samples, "warmgate_phase", phase="ready") == 1
    assert sum(v for (name, _), v in samples.items() if name == "warmgate_phase") == 1
    assert value(samples, "warmgate_phase", phase="warming") == 0
    assert value(samples, "warmgate_instance_info", instance_id="current-instance") == 1

    assert value(samples, "warmgate_shape_first_request_seconds", shape="bs1") == 0.9
    assert value(samples, "warmgate_shape_first_request_seconds", shape="bs8") == 1.8
    assert value(samples, "warmgate_shape_steady_seconds", shape="bs1", quantile="0.5") == 0.010
    assert value(samples, "warmgate_shape_steady_seconds", shape="bs1", quantile="0.95") == 0.014
    assert value(samples, "warmgate_shape_steady_seconds", shape="bs1", quantile="0.99") == 0.02
    assert value(samples, "warmgate_shape_first_to_steady_ratio", shape="bs8") == 180.0
    assert value(samples, "warmgate_shape_post_warm_seconds", shape="bs1") == 0.012
    # Absent values are left out, not exported as 0.
    assert value(samples, "warmgate_shape_post_warm_seconds", shape="bs8") is None

    assert value(samples, "warmgate_shape_concurrency_checked", shape="bs1") == 120
    assert value(samples, "warmgate_shape_concurrency_mismatches", shape="bs1") == 3
    assert value(samples, "warmgate_shape_concurrency_max_abs_deviation", shape="bs1") == 0.5
    # bs8 opted out of the check: no figures rather than a misleading zero mismatches.
    assert value(samples, "warmgate_shape_concurrency_mismatches", shape="bs8") is None

    assert value(samples, "warmgate_phase_duration_seconds", phase="warming") == 4.25
    # A phase the run did not time is 0 seconds, not absent.
    assert value(samples, "warmgate_phase_duration_seconds", phase="post-warm-check") == 0
    # The contract `warmgate promote` reads.
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.95") == 0.035
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.5") == 0.02
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.9") == 0.03
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.99") == 0.05
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="1") == 0.08
    # Percentiles are exposed as summaries (promtool reserves `quantile` for them), with counts.
    assert value(samples, "warmgate_loadtest_latency_seconds_count") == 477
    assert value(samples, "warmgate_shape_steady_seconds_count", shape="bs1") == 40
    assert value(samples, "warmgate_shape_steady_seconds_sum", shape="bs1") == pytest.approx(0.44)
    assert value(samples, "warmgate_loadtest_throughput_requests_per_second") == 95.5
    assert value(samples, "warmgate_loadtest_requests") == 480
    assert value(samples, "warmgate_loadtest_errors", kind="http_500") == 2
    assert value(samples, "warmgate_loadtest_errors", kind="timeout") == 1
    # Every known kind is there at 0, so `warmgate_loadtest_errors{kind="connection"} > 0` needs
    # no `or vector(0)`.
    assert value(samples, "warmgate_loadtest_errors", kind="connection") == 0
    assert value(samples, "warmgate_loadtest_errors", kind="invalid_response") == 0

    assert value(samples, "warmgate_memory_peak_bytes") == 512 * 2**20
    assert value(samples, "warmgate_memory_limit_bytes") == 2 * 2**30
    assert value(samples, "warmgate_gpu_memory_peak_bytes", gpu="0") == 3 * 2**30
    assert value(samples, "warmgate_gpu_memory_total_bytes", gpu="0") == 141 * 2**30

    assert value(samples, "warmgate_gate_passed") == 1
    assert value(samples, "warmgate_gate_check_passed", check="error_rate") == 1
    # The shape is a label of its own, not part of the check's name.
    assert value(samples, "warmgate_gate_check_passed", check="post_warm_ratio", shape="bs1") == 1
    assert not any(
        "[" in dict(labels)["check"] for name, labels in samples if name == "warmgate_gate_check_passed"
    )
    assert value(samples, "warmgate_entrypoint_running") == 1

    # The probe's own traffic: the /readyz above, and this scrape is counted once it is answered.
    assert value(samples, "warmgate_probe_requests_total", endpoint="/readyz", code="200") == 1
    assert value(samples, "warmgate_probe_request_duration_seconds_count", endpoint="/readyz") == 1
    _, again = await scrape(client)
    assert value(again, "warmgate_probe_requests_total", endpoint="/metrics", code="200") == 1


async def test_before_the_marker_only_state_gauges(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    writer.set_phase(Phase.WARMING, "warming")
    _, client = await make_probe(config)
    _, samples = await scrape(client)
    assert value(samples, "warmgate_ready") == 0
    assert value(samples, "warmgate_phase", phase="warming") == 1
    assert not any(
        name.startswith(("warmgate_shape_", "warmgate_loadtest_", "warmgate_gate_"))
        for name in names(samples)
    )


async def test_no_state_at_all(config: Any, make_probe: ProbeFactory) -> None:
    _, client = await make_probe(config)
    _, samples = await scrape(client)
    assert value(samples, "warmgate_ready") == 0
    assert all(v == 0 for (name, _), v in samples.items() if name == "warmgate_phase")
    assert "warmgate_instance_info" not in names(samples)


async def test_evidence_survives_the_drain_but_not_a_new_instance(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    await scrape(client)
    writer.set_phase(Phase.DRAINING, "draining")
    writer.clear_ready()
    _, samples = await scrape(client)
    assert value(samples, "warmgate_ready") == 0
    assert value(samples, "warmgate_phase", phase="draining") == 1
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.95") == 0.035

    writer.close()  # the old container's entrypoint has exited
    restarted = StateWriter(writer.state_dir, instance_id="next-instance")
    restarted.prepare()
    _, samples = await scrape(client)
    assert value(samples, "warmgate_instance_info", instance_id="next-instance") == 1
    assert "warmgate_loadtest_latency_seconds" not in names(samples)


def test_sparse_report_leaves_out_what_it_lacks(tmp_path: Any) -> None:
    report = full_report(
        "i",
        shapes=[ShapeReport(name="bs1", batch_size=1, steady=LatencyStats(p50_s=0.01))],
        load_test=None,
        memory=MemoryReport(),
    )
    families = {family.name: family for family in report_families(report)}
    steady = [(s.name, s.labels) for s in families["warmgate_shape_steady_seconds"].samples]
    # A summary: the one known quantile and the count (the sum needs the mean, which is absent).
    assert steady == [
        ("warmgate_shape_steady_seconds", {"shape": "bs1", "quantile": "0.5"}),
        ("warmgate_shape_steady_seconds_count", {"shape": "bs1"}),
    ]
    assert families["warmgate_shape_first_request_seconds"].samples == []
    assert "warmgate_loadtest_latency_seconds" not in families
    assert "warmgate_memory_peak_bytes" not in families
    assert "warmgate_gpu_memory_peak_bytes" not in families


def test_duplicate_names_in_a_report_do_not_break_the_exposition() -> None:
    shape = ShapeReport(name="bs1", batch_size=1, first_s=0.5)
    report = full_report("i", shapes=[shape, replace(shape, first_s=0.7)])
    families = {family.name: family for family in report_families(report)}
    assert [s.value for s in families["warmgate_shape_first_request_seconds"].samples] == [0.7]


async def test_openmetrics_negotiation(config: Any, writer: StateWriter, make_probe: ProbeFactory) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    text, samples = await scrape(client, accept="application/openmetrics-text; version=1.0.0")
    assert text.rstrip().endswith("# EOF")
    assert value(samples, "warmgate_loadtest_latency_seconds", quantile="0.95") == 0.035
    assert value(samples, "warmgate_instance_info", instance_id="current-instance") == 1


def promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    if os.environ.get("CI"):
        pytest.fail("promtool is missing in CI: install the Debian package `prometheus` (it ships promtool)")
    pytest.skip("promtool not installed (Debian package `prometheus`); required when CI is set")


async def test_exposition_passes_promtool(config: Any, writer: StateWriter, make_probe: ProbeFactory) -> None:
    tool = promtool()
    make_ready(writer)
    _, client = await make_probe(config)
    for path in ("/startupz", "/readyz", "/livez", "/healthz", "/nope"):
        await client.get(path)
    text, _ = await scrape(client)
    result = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}\n---\n{text}"
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_collector_reads_state_at_scrape_time(writer: StateWriter) -> None:
    view = StateView(writer.state_dir)
    families = report_families(full_report(writer.instance_id))
    assert families  # the pure function
    registry, _ = build_registry(lambda: MetricsInput(view.snapshot(), False))
    assert registry.get_sample_value("warmgate_phase", {"phase": "starting"}) == 1
    writer.set_phase(Phase.WARMING, "warming")
    assert registry.get_sample_value("warmgate_phase", {"phase": "warming"}) == 1
    assert registry.get_sample_value("warmgate_phase", {"phase": "starting"}) == 0


@pytest.mark.parametrize("accept", [None, "application/openmetrics-text; version=1.0.0"])
async def test_no_created_series(
    accept: str | None, config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    await client.get("/readyz")
    text, samples = await scrape(client, accept=accept)
    # The probe's own counter and histogram are there, their _created series are not.
    assert value(samples, "warmgate_probe_requests_total", endpoint="/readyz", code="200") == 1
    assert "_created" not in text
    assert not [name for name in names(samples) if name.endswith("_created")]


async def test_known_endpoints_start_at_zero(config: Any, make_probe: ProbeFactory) -> None:
    _, client = await make_probe(config)
    _, samples = await scrape(client)
    for endpoint in ("/startupz", "/readyz", "/livez", "/healthz", "other"):
        assert value(samples, "warmgate_probe_request_duration_seconds_count", endpoint=endpoint) == 0
    # This scrape itself is counted once answered.
    assert value(samples, "warmgate_probe_request_duration_seconds_count", endpoint="/metrics") == 0


@pytest.mark.parametrize("phase", [Phase.STOPPED, Phase.FAILED])
async def test_a_run_that_ended_says_so(
    phase: Phase, config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    _, samples = await scrape(client)
    assert value(samples, "warmgate_entrypoint_running") == 1
    assert value(samples, "warmgate_ready") == 1

    writer.clear_ready()
    writer.set_phase(phase, "the entrypoint has exited")
    _, samples = await scrape(client)
    assert value(samples, "warmgate_entrypoint_running") == 0
    assert value(samples, "warmgate_ready") == 0
    assert value(samples, "warmgate_phase", phase=phase.value) == 1


async def test_state_gone_means_not_running(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    make_ready(writer)
    _, client = await make_probe(config)
    _, samples = await scrape(client)
    assert value(samples, "warmgate_entrypoint_running") == 1
    (writer.state_dir / "status.json").unlink()
    _, samples = await scrape(client)
    assert value(samples, "warmgate_entrypoint_running") == 0
    assert value(samples, "warmgate_ready") == 0
    assert all(v == 0 for (name, _), v in samples.items() if name == "warmgate_phase")


def test_peak_memory_is_the_measure_the_gate_judges() -> None:
    from warmgate.config import validate_config
    from warmgate.entrypoint.engine.gate import memory_checks

    config = validate_config({"server": {"command": ["true"]}}, "test", {})
    pss, rss, limit = 300 * 2**20, 900 * 2**20, 2 * 2**30
    with_pss = MemoryReport(peak_rss_bytes=rss, peak_pss_bytes=pss, samples=3, limit_bytes=limit)
    families = {family.name: family for family in report_families(full_report("i", memory=with_pss))}
    peak = families["warmgate_memory_peak_bytes"]
    assert [s.value for s in peak.samples] == [pss]
    assert "PSS" in peak.documentation
    # The gate's memory check is the peak over the limit: the same peak.
    (check,) = memory_checks(config, with_pss)
    assert check.value == pytest.approx(pss / limit)

    rss_only = MemoryReport(peak_rss_bytes=rss, samples=3, limit_bytes=limit)
    families = {family.name: family for family in report_families(full_report("i", memory=rss_only))}
    assert [s.value for s in families["warmgate_memory_peak_bytes"].samples] == [rss]
    (check,) = memory_checks(config, rss_only)
    assert check.value == pytest.approx(rss / limit)


def test_per_shape_and_per_gpu_checks_carry_their_own_label() -> None:
    checks = [
        GateCheck(name="memory", passed=True),
        GateCheck(name="concurrency[bs 1]", passed=False),
        GateCheck(name="post_warm_ratio[bs1]", passed=True),
        GateCheck(name="gpu_memory[0]", passed=True),
    ]
    report = full_report("i", gate=GateVerdict(passed=False, checks=checks))
    families = {family.name: family for family in report_families(report)}
    assert [(s.labels, s.value) for s in families["warmgate_gate_check_passed"].samples] == [
        ({"check": "memory"}, 1.0),
        ({"check": "concurrency", "shape": "bs 1"}, 0.0),
        ({"check": "post_warm_ratio", "shape": "bs1"}, 1.0),
        ({"check": "gpu_memory", "gpu": "0"}, 1.0),
    ]
