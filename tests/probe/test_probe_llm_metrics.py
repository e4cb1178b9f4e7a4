"""/metrics for LLM prompt shapes: post-warm time to first token per shape, the load test's TTFT,
inter-token latency and output tokens per second (overall over the streamed shapes, and per
shape), the prompt lengths the server counted, and the stream failure kinds at 0."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from prometheus_client.core import Metric

from tests.probe.conftest import ProbeFactory
from tests.probe.fakes import full_report
from tests.probe.test_probe_metrics import promtool, scrape, value
from warmgate.probe.metrics import report_families
from warmgate.state import (
    LatencyStats,
    LoadTestReport,
    Phase,
    PromptReport,
    Report,
    ShapeReport,
    StateWriter,
    TokenStats,
)

pytestmark = pytest.mark.timeout(30)


def stats(p50: float, count: int = 10) -> LatencyStats:
    return LatencyStats(
        count=count, mean_s=p50, p50_s=p50, p90_s=2 * p50, p95_s=3 * p50, p99_s=4 * p50, max_s=5 * p50
    )


def llm_report(instance_id: str) -> Report:
    def shape(name: str, tokens: int, stream: bool) -> ShapeReport:
        return ShapeReport(
            name=name,
            batch_size=1,
            first_s=0.5,
            steady=stats(0.04),
            post_warm_s=0.05,
            post_warm_baseline=stats(0.04, count=5),
            post_warm_ratio=1.25,
            prompt=PromptReport(
                target_tokens=tokens,
                achieved_tokens=tokens + 2,
                counted_by="tokenize",
                max_tokens=64,
                stream=stream,
            ),
        )

    load = LoadTestReport(
        mode="closed",
        duration_s=10.0,
        concurrency=8,
        requests=200,
        errors={"stream_stalled": 1},
        throughput_rps=19.9,
        latency=stats(0.8, count=199),
        tokens=TokenStats(
            ttft=stats(0.05, count=150),
            itl=stats(0.01, count=9000),
            output_tokens=9600,
            output_tokens_per_s=960.0,
        ),
        per_shape_tokens={
            "chat-512": TokenStats(
                ttft=stats(0.05, 150), itl=stats(0.01, 9000), output_tokens=9600, output_tokens_per_s=960.0
            ),
            "summary-2048": TokenStats(ttft=stats(0.9, 49), output_tokens=3136, output_tokens_per_s=313.6),
        },
    )
    return full_report(
        instance_id,
        protocol="openai",
        shapes=[shape("chat-512", 512, True), shape("summary-2048", 2048, False)],
        load_test=load,
    )


def families_of(report: Report) -> dict[str, Metric]:
    return {family.name: family for family in report_families(report)}


async def test_llm_figures_per_shape_and_overall(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    writer.write_ready(llm_report(writer.instance_id))
    writer.set_phase(Phase.READY, "ready")
    _, client = await make_probe(config)
    _, samples = await scrape(client)

    assert value(samples, "warmgate_shape_ttft_first_seconds", shape="chat-512") == 0.05
    assert value(samples, "warmgate_shape_ttft_steady_seconds", shape="chat-512", quantile="0.5") == 0.04
    assert value(samples, "warmgate_shape_ttft_steady_seconds_count", shape="chat-512") == 5
    assert value(samples, "warmgate_shape_prompt_tokens", shape="summary-2048") == 2050

    assert value(samples, "warmgate_loadtest_ttft_seconds", quantile="0.95") == pytest.approx(0.15)
    assert value(samples, "warmgate_loadtest_ttft_seconds_count") == 150
    assert value(samples, "warmgate_loadtest_itl_seconds", quantile="0.5") == 0.01
    assert value(samples, "warmgate_loadtest_itl_seconds", quantile="1") == pytest.approx(0.05)
    assert value(samples, "warmgate_loadtest_output_tokens_per_second") == 960.0
    assert value(samples, "warmgate_shape_loadtest_ttft_seconds", shape="summary-2048", quantile="0.5") == 0.9
    assert value(samples, "warmgate_shape_loadtest_itl_seconds", shape="chat-512", quantile="0.95") == 0.03
    # A non-streamed shape has no token gaps: no ITL series rather than zeros.
    assert value(samples, "warmgate_shape_loadtest_itl_seconds_count", shape="summary-2048") is None
    assert value(samples, "warmgate_shape_output_tokens_per_second", shape="summary-2048") == 313.6

    # The stream failure kinds are known in advance: at 0 when they did not happen.
    assert value(samples, "warmgate_loadtest_errors", kind="stream_stalled") == 1
    for kind in ("stream_truncated", "stream_malformed", "stream_error", "no_first_token", "timeout"):
        assert value(samples, "warmgate_loadtest_errors", kind=kind) == 0


def test_tensor_reports_have_no_llm_families() -> None:
    families = families_of(full_report("i"))
    assert not [name for name in families if "ttft" in name or "itl" in name or "tokens" in name]
    kinds = {s.labels["kind"] for s in families["warmgate_loadtest_errors"].samples}
    assert not {kind for kind in kinds if kind.startswith("stream_")}


async def test_llm_exposition_passes_promtool(
    config: Any, writer: StateWriter, make_probe: ProbeFactory
) -> None:
    tool = promtool()
    writer.write_ready(llm_report(writer.instance_id))
    writer.set_phase(Phase.READY, "ready")
    _, client = await make_probe(config)
    text, _ = await scrape(client)
    result = subprocess.run(
        [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}\n---\n{text}"
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
