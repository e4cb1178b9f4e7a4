"""The engine with prompt shapes (protocol openai) against the fake OpenAI-compatible server
(tests/support/fakellm.py, in-process): calibration, warmup, load test and post-warm check on time
to first token, the TTFT and ITL SLOs, a shape left cold, and every stream fault failing with its
kind. The real server (`transformers serve`) is in tests/entrypoint/test_llm_end_to_end.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.fakellm import Bucket, FakeLLM, make_app
from warmgate.config import Config, validate_config
from warmgate.entrypoint.engine.prompts import tolerance
from warmgate.entrypoint.report import format_report
from warmgate.protocols import adapters
from warmgate.state import GateCheck, Report

Prove = Callable[..., Awaitable[Report]]
Serve = Callable[[FakeLLM], Awaitable[str]]


def prompt_shape(name: str, tokens: int, *, count: int = 3, **prompt: Any) -> dict[str, Any]:
    extra = {key: prompt.pop(key) for key in ("weight", "compare") if key in prompt}
    return {"name": name, "prompt": {"tokens": tokens, "max_tokens": 4, **prompt}, "count": count, **extra}


def llm_config(url: str, state_dir: Path, **sections: Any) -> Config:
    raw: dict[str, Any] = {
        "server": {
            "url": url,
            "protocol": "openai",
            "model": "tiny",
            "request_timeout_s": 2,
            "openai": {"family": "vllm"},
        },
        "shapes": [prompt_shape("chat-64", 64), prompt_shape("text-300", 300, chat=False)],
        "load_test": {"duration_s": 0.4, "concurrency": 4},
        "memory": {"sample_interval_s": 0.05},
        "state_dir": str(state_dir),
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(raw, "test.yaml", {}, protocols=adapters())


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    async def start(fake: FakeLLM, *middlewares: Any) -> str:
        app = make_app(fake)
        app.middlewares.extend(middlewares)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


def check(report: Report, name: str) -> GateCheck:
    [found] = [c for c in report.gate.checks if c.name == name]
    return found


def failed(report: Report) -> list[str]:
    return [c.name for c in report.gate.checks if not c.passed]


async def test_warm_load_and_gate_pass_with_ttft_and_itl_measured(
    serve: Serve, prove: Prove, tmp_path: Path
) -> None:
    fake = FakeLLM(
        ttft_s=0.01, itl_s=0.004, buckets=[Bucket(128, 0.01, 0.004, 0.3), Bucket(1024, 0.02, 0.004)]
    )
    config = llm_config(await serve(fake), tmp_path, gate={"ttft_p95_ms": 1000, "itl_p95_ms": 500})
    report = await prove(config)

    assert report.gate.passed, report.gate.reason
    assert {"ttft_p95_ms", "itl_p95_ms", "post_warm_ratio[chat-64]", "post_warm_ratio[text-300]"} <= {
        c.name for c in report.gate.checks
    }
    assert report.gate.notes == []
    chat, text = report.shapes
    # Warmup paid the cold first prefill of the short bucket: its first TTFT shows it.
    assert chat.first_s is not None and chat.first_s >= 0.3 and chat.steady.p50_s is not None
    assert chat.steady.p50_s < 0.1 and chat.post_warm_s is not None and chat.post_warm_s < 0.1
    for shape in (chat, text):
        assert shape.prompt is not None and shape.prompt.unique and shape.prompt.counted_by == "tokenize"
        assert shape.concurrency_check is not None and "batches" in shape.concurrency_check.skipped
    load = report.load_test
    assert load is not None and load.tokens is not None and not load.errors
    assert load.tokens.ttft.count == load.requests
    # 4 tokens per answer: 3 gaps each, of about the ITL.
    assert load.tokens.itl.count == 3 * load.requests
    assert load.tokens.itl.p50_s is not None and 0.004 <= load.tokens.itl.p50_s < 0.1
    assert load.tokens.output_tokens == 4 * load.requests and load.tokens.output_tokens_per_s > 0
    assert set(load.per_shape_tokens) == {"chat-64", "text-300"}
    # Every generation request had a prompt of its own.
    assert len(set(fake.stats.prompts)) == len(fake.stats.prompts) == fake.stats.requests

    # `warmgate report` (and the log) show the prompt lengths and the completions' figures.
    text = format_report(report)
    assert (
        "prompts (first, steady and post-warm above are times to first token; every request's prompt " in text
    )
    [chat_row] = [line.split() for line in text.splitlines() if line.split()[:2] == ["chat-64", "64"]]
    assert chat_row[3:8] == ["tokenize", str(chat.prompt.calibration_requests), "4", "yes", "yes"]
    assert chat_row[2] == str(chat.prompt.achieved_tokens)
    assert "completions (TTFT: time to first token; ITL: gap between streamed tokens):" in text
    [streamed] = [line.split() for line in text.splitlines() if line.split()[:1] == ["streamed"]]
    assert streamed[1] == str(load.tokens.ttft.count) and streamed[-2] == str(load.tokens.output_tokens)
    assert "[pass] ttft_p95_ms" in text and "[pass] itl_p95_ms" in text


@pytest.mark.parametrize("family", ["vllm", "transformers"], ids=["tokenize", "usage"])
@pytest.mark.parametrize("tokens", [20, 300, 2000])
async def test_calibration_reaches_the_target_within_tolerance(
    serve: Serve, prove: Prove, tmp_path: Path, family: str, tokens: int
) -> None:
    fake = FakeLLM()
    shapes = [
        prompt_shape("chat", tokens, count=1, weight=0),
        prompt_shape("text", tokens, count=1, chat=False),
    ]
    config = llm_config(
        await serve(fake),
        tmp_path,
        server={"openai": {"family": family}},
        shapes=shapes,
        load_test={"enabled": False},
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    sent_after_calibration = set(fake.stats.prompt_tokens[-12:])
    for shape in report.shapes:
        prompt = shape.prompt
        assert prompt is not None and prompt.achieved_tokens is not None, prompt
        assert abs(prompt.achieved_tokens - tokens) <= tolerance(tokens), prompt
        assert prompt.counted_by == ("tokenize" if family == "vllm" else "usage") and not prompt.note
        assert 1 <= prompt.calibration_requests <= 6
        # What the warmup and post-warm check sent is what calibration counted.
        assert prompt.achieved_tokens in sent_after_calibration


async def test_ttft_and_itl_slos_fail_when_exceeded(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    fake = FakeLLM(ttft_s=0.03, itl_s=0.02)
    config = llm_config(await serve(fake), tmp_path, gate={"ttft_p95_ms": 5, "itl_p95_ms": 5})
    report = await prove(config)
    assert failed(report) == ["ttft_p95_ms", "itl_p95_ms"]
    ttft, itl = check(report, "ttft_p95_ms"), check(report, "itl_p95_ms")
    assert ttft.value is not None and ttft.value >= 30 and ttft.threshold == 5
    assert ttft.detail.startswith("load-test TTFT p95 ") and ttft.detail.endswith("exceeds the SLO of 5 ms")
    assert itl.value is not None and itl.value >= 20
    assert itl.detail.startswith("load-test ITL p95 ")


async def test_slos_judge_streamed_shapes_only(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    # The non-streamed shape's first token comes with its last (0.2 s in); the streamed one's in 10 ms.
    fake = FakeLLM(ttft_s=0.01, itl_s=0.06)
    shapes = [prompt_shape("streamed", 32), prompt_shape("whole", 32, stream=False)]
    report = await prove(llm_config(await serve(fake), tmp_path, shapes=shapes, gate={"ttft_p95_ms": 150}))
    assert check(report, "ttft_p95_ms").passed, report.gate.reason
    load = report.load_test
    assert load is not None and load.tokens is not None
    whole = load.per_shape_tokens["whole"]
    assert whole.ttft.p50_s is not None and whole.ttft.p50_s >= 0.18 and whole.itl.count == 0


async def test_a_shape_left_cold_fails_the_ttft_ratio(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    # The 4th generation request (after a warmup of 3, outside the load test) pays a one-time
    # 0.3 s before its first token: a cost the warmup did not reach.
    calls = 0

    @web.middleware
    async def cold_fourth(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal calls
        if request.path.startswith("/v1/") and request.method == "POST":
            calls += 1
            if calls == 4:
                await asyncio.sleep(0.3)
        return await handler(request)

    fake = FakeLLM(ttft_s=0.005, itl_s=0.001)
    shapes = [prompt_shape("chat-64", 64, weight=0)]
    config = llm_config(await serve(fake, cold_fourth), tmp_path, shapes=shapes, gate={"ratio_floor_ms": 0})
    report = await prove(config)
    ratio = check(report, "post_warm_ratio[chat-64]")
    assert not ratio.passed and ratio.value is not None and ratio.value > 10
    assert ratio.detail.startswith("shape chat-64: first token of the first request after warmup took ")
    assert report.shapes[0].post_warm_s is not None and report.shapes[0].post_warm_s >= 0.3


STREAM_FAULTS = [
    ("stall", "stream_stalled", "the stream stalled: nothing for 0.2s after token 1"),
    ("truncate", "stream_truncated", "the stream ended after 1 tokens without a finish_reason"),
    ("malformed", "stream_malformed", "an event that is not JSON"),
    ("not-chunk", "stream_malformed", "an event without a choices list"),
    ("no-first-token", "no_first_token", "the stream finished (finish_reason stop) without a token"),
    ("error-event", "stream_error", "the server reported an error in the stream: CUDA out of memory"),
]


@pytest.mark.parametrize(("behaviour", "kind", "reason"), STREAM_FAULTS, ids=[f[0] for f in STREAM_FAULTS])
async def test_a_stream_fault_in_warmup_fails_the_shape_with_its_reason(
    serve: Serve, prove: Prove, tmp_path: Path, behaviour: str, kind: str, reason: str
) -> None:
    fake = FakeLLM(behaviour=behaviour, fault_after=1, stall_s=5)
    config = llm_config(
        await serve(fake),
        tmp_path,
        shapes=[prompt_shape("chat-64", 64)],
        server={"openai": {"family": "vllm", "stall_timeout_s": 0.2}},
    )
    report = await prove(config)
    warmup = check(report, "warmup[chat-64]")
    assert not warmup.passed and warmup.detail.startswith(f"shape chat-64: {reason}"), warmup.detail
    assert report.shapes[0].error == warmup.detail


@pytest.mark.parametrize(("behaviour", "kind", "reason"), STREAM_FAULTS, ids=[f[0] for f in STREAM_FAULTS])
async def test_a_stream_fault_under_load_is_counted_by_its_kind(
    serve: Serve, prove: Prove, tmp_path: Path, behaviour: str, kind: str, reason: str
) -> None:
    # Healthy through the warmup (3 requests), faulty from the load test on.
    fake = FakeLLM(behaviour=behaviour, fault_from=4, fault_after=1, stall_s=5)
    config = llm_config(
        await serve(fake),
        tmp_path,
        shapes=[prompt_shape("chat-64", 64)],
        server={"openai": {"family": "vllm", "stall_timeout_s": 0.2}},
        load_test={"duration_s": 0.3, "concurrency": 2},
    )
    report = await prove(config)
    load = report.load_test
    assert load is not None and set(load.errors) == {kind} and load.errors[kind] == load.requests
    assert load.per_shape_errors == {"chat-64": {kind: load.requests}}
    rate = check(report, "error_rate")
    assert not rate.passed and f"({kind} {load.requests})" in rate.detail
    # Faulty after the load test too: the post-warm check fails the shape with the reason.
    post_warm = check(report, "post_warm[chat-64]")
    assert not post_warm.passed and reason in post_warm.detail


async def test_open_loop_charges_the_wait_to_ttft(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    fake = FakeLLM(ttft_s=0.005, itl_s=0.002)
    config = llm_config(
        await serve(fake),
        tmp_path,
        shapes=[prompt_shape("chat-64", 64)],
        load_test={"mode": "open", "rate": 40, "duration_s": 0.5},
        gate={"ttft_p95_ms": 1000},
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    load = report.load_test
    assert load is not None and load.tokens is not None and load.target_rate == 40
    assert load.tokens.ttft.count == load.requests == 20
    assert load.tokens.ttft.p50_s is not None and load.latency.p50_s is not None
    assert load.tokens.ttft.p50_s < load.latency.p50_s


async def test_compare_on_checks_answers_under_load(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    fake = FakeLLM(ttft_s=0.002)
    config = llm_config(await serve(fake), tmp_path, shapes=[prompt_shape("chat-64", 64, compare=True)])
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    checked = report.shapes[0].concurrency_check
    assert checked is not None and not checked.skipped and checked.checked > 0 and checked.mismatches == 0
    # The golden prompts repeat (fixed starts, one per variant); every other request is unique.
    repeated = len(fake.stats.prompts) - len(set(fake.stats.prompts))
    assert repeated == checked.variants + checked.checked


async def test_a_prompt_over_the_payload_budget_is_refused_before_sending(
    serve: Serve, prove: Prove, tmp_path: Path
) -> None:
    fake = FakeLLM()
    config = llm_config(
        await serve(fake),
        tmp_path,
        shapes=[prompt_shape("long", 100_000)],
        warmup={"max_payload_bytes": 100_000},
    )
    report = await prove(config)
    payload = check(report, "payload[long]")
    assert not payload.passed and "exceeds warmup.max_payload_bytes" in payload.detail
    assert fake.stats.requests == 0 and fake.stats.tokenize_calls == 0


async def test_streams_without_usage_count_their_events(serve: Serve, prove: Prove, tmp_path: Path) -> None:
    fake = FakeLLM(usage="never")  # whole answers (calibration's) still carry usage
    config = llm_config(await serve(fake), tmp_path, server={"openai": {"family": "generic"}})
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    assert all(shape.prompt is not None and shape.prompt.counted_by == "usage" for shape in report.shapes)
    load = report.load_test
    assert load is not None and load.tokens is not None and load.tokens.output_tokens == 4 * load.requests


async def test_a_server_that_cannot_count_gets_the_estimate_and_the_report_says_why(
    serve: Serve, prove: Prove, tmp_path: Path
) -> None:
    @web.middleware
    async def no_usage(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if (
            isinstance(response, web.Response)
            and response.content_type == "application/json"
            and response.body
        ):
            document = json.loads(response.text)
            document.pop("usage", None)
            response.body = json.dumps(document).encode()
        return response

    fake = FakeLLM(usage="never")
    config = llm_config(
        await serve(fake, no_usage),
        tmp_path,
        server={"openai": {"family": "generic"}},
        shapes=[prompt_shape("p", 50)],
    )
    report = await prove(config)
    assert report.gate.passed, report.gate.reason
    prompt = report.shapes[0].prompt
    assert prompt is not None and prompt.achieved_tokens is None and prompt.counted_by == ""
    assert prompt.note.startswith("not calibrated: the answer has no usage.prompt_tokens")
    # The estimate: one filler word per target token, after the unique start.
    assert fake.stats.prompt_tokens[-1] == 50 + 5 + 7
