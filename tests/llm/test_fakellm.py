"""The fake LLM server does what its options say: the engine's fault tests rely on it to misbehave
on cue, and its timings to be the ones they set. Read with plain aiohttp (tests/support/sseclient)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.fakellm import (
    BEHAVIOURS,
    CHAT_TOKENS_GENERATION_PROMPT,
    CHAT_TOKENS_PER_MESSAGE,
    Bucket,
    FakeLLM,
    fake_llm_command,
    make_app,
)
from tests.support.procs import Proc
from tests.support.sseclient import Stream, post_stream

PROMPT = "one two three four five six seven eight"  # 8 tokens for the fake tokenizer


async def start(aiohttp_server: Any, **options: Any) -> tuple[str, FakeLLM]:
    fake = FakeLLM(**options)
    server = await aiohttp_server(make_app(fake))
    return str(server.make_url("")).rstrip("/"), fake


def completion(max_tokens: int = 5, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "stream": stream, **extra}


def chat(max_tokens: int = 5, stream: bool = True, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": PROMPT}]
    return {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "stream": stream, **extra}


async def stream(url: str, body: dict[str, Any], timeout_s: float = 10.0) -> Stream:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with aiohttp.ClientSession() as session:
        return await post_stream(session, url + path, body, timeout_s)


async def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url + path, json=body) as response:
        return response.status, await response.read()


async def get_status(url: str, path: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status


async def get_json(url: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + path) as response:
        return response.status, await response.json(content_type=None)


# ---- healthy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [completion(), chat()], ids=["completions", "chat"])
async def test_healthy_stream_one_event_per_token_finish_usage_on_request_and_done(
    aiohttp_server: Any, body: dict[str, Any]
) -> None:
    url, fake = await start(aiohttp_server)
    plain = await stream(url, body)
    assert plain.status == 200 and plain.content_type.startswith("text/event-stream")
    assert len(plain.content_events()) == 5 and plain.finish_reason() == "length"
    assert plain.usage() is None and plain.done and not plain.cut
    with_usage = await stream(url, {**body, "stream_options": {"include_usage": True}})
    prompt_tokens = 8 if "prompt" in body else 8 + CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_GENERATION_PROMPT
    assert with_usage.usage() == {
        "prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5,
    }  # fmt: skip
    assert with_usage.chunks[-1]["choices"] == [], "usage rides on its own chunk, as in vLLM"
    texts = "".join(
        (c["choices"][0].get("delta") or {}).get("content") or c["choices"][0].get("text") or ""
        for c in with_usage.chunks
        if c["choices"]
    )
    assert texts.split() == [f"tok{i}" for i in range(5)]
    assert fake.stats.requests == 2 and fake.stats.prompt_tokens == [prompt_tokens] * 2
    if "messages" in body:
        assert plain.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize("mode, expect", [("always", True), ("never", False)])
async def test_usage_always_or_never_whatever_the_request_asks(
    aiohttp_server: Any, mode: str, expect: bool
) -> None:
    url, _ = await start(aiohttp_server, usage=mode)
    asked = await stream(url, completion(stream_options={"include_usage": True}))
    not_asked = await stream(url, completion())
    assert (asked.usage() is not None, not_asked.usage() is not None) == (expect, expect)


async def test_non_streamed_answer_carries_usage_and_text(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server)
    status, raw = await post(url, "/v1/chat/completions", chat(max_tokens=3, stream=False))
    answer = json.loads(raw)
    assert status == 200 and answer["choices"][0]["message"]["content"] == " tok0 tok1 tok2"
    assert answer["usage"]["completion_tokens"] == 3 and answer["choices"][0]["finish_reason"] == "length"


async def test_timings_ttft_itl_and_a_cold_first_request_per_bucket(aiohttp_server: Any) -> None:
    buckets = [Bucket(4, 0.01, 0.0), Bucket(64, 0.05, 0.03, cold_s=0.3)]
    url, fake = await start(aiohttp_server, buckets=buckets)
    first = await stream(url, completion(max_tokens=4))
    second = await stream(url, completion(max_tokens=4))
    short = await stream(url, {**completion(max_tokens=2), "prompt": "a b"})
    first_ttft = first.content_events()[0].at_s
    ttft = second.content_events()[0].at_s
    gaps = [
        b.at_s - a.at_s
        for a, b in zip(second.content_events()[:-1], second.content_events()[1:], strict=True)
    ]
    assert first_ttft >= 0.35 and 0.05 <= ttft < first_ttft - 0.2
    assert len(gaps) == 3 and all(g >= 0.025 for g in gaps)
    assert short.content_events()[0].at_s < 0.05 + 0.2
    assert fake.stats.per_bucket == {64: 2, 4: 1}


async def test_itl_grows_with_streams_in_progress(aiohttp_server: Any) -> None:
    url, fake = await start(aiohttp_server, itl_s=0.005, itl_load_s=0.02)
    alone = await stream(url, completion(max_tokens=4))
    together = await asyncio.gather(*(stream(url, completion(max_tokens=4)) for _ in range(4)))

    def mean_gap(s: Stream) -> float:
        events = s.content_events()
        return (events[-1].at_s - events[0].at_s) / (len(events) - 1)

    assert fake.stats.max_streams_in_progress == 4
    assert min(mean_gap(s) for s in together) > mean_gap(alone) + 0.02


async def test_tokenize_counts_like_usage_and_can_be_absent(aiohttp_server: Any) -> None:
    url, fake = await start(aiohttp_server)
    status, raw = await post(url, "/tokenize", {"model": "tiny", "prompt": PROMPT})
    assert status == 200 and json.loads(raw)["count"] == 8 and json.loads(raw)["max_model_len"] == 32768
    status, raw = await post(url, "/tokenize", {"model": "tiny", "messages": chat()["messages"]})
    assert json.loads(raw)["count"] == 8 + CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_GENERATION_PROMPT
    assert fake.stats.tokenize_calls == 2
    url, _ = await start(aiohttp_server, tokenize=False)
    assert (await post(url, "/tokenize", {"model": "tiny", "prompt": PROMPT}))[0] == 404


async def test_unknown_model_too_long_and_slow_start(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server, served_models=["llama-3-8b", "other"], max_model_len=10)
    status, listed = await get_json(url, "/v1/models")
    assert status == 200 and [m["id"] for m in listed["data"]] == ["llama-3-8b", "other"]
    status, raw = await post(url, "/v1/completions", {**completion(stream=False), "model": "nope"})
    assert status == 404 and "does not exist" in json.loads(raw)["error"]["message"]
    too_long = {**completion(max_tokens=5, stream=False), "model": "other"}
    status, raw = await post(url, "/v1/completions", too_long)
    assert status == 400 and "maximum context length is 10" in json.loads(raw)["error"]["message"]
    assert (await get_status(url, "/health")) == 200
    url, _ = await start(aiohttp_server, ready_after_s=30)
    assert (await get_status(url, "/health")) == 503


# ---- faults ----------------------------------------------------------------------------------


async def test_stall_sends_some_tokens_then_nothing(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server, behaviour="stall", fault_after=2)
    events: list[str] = []

    async def read(response: aiohttp.ClientResponse) -> None:
        async for line in response.content:
            if line.startswith(b"data:"):
                events.append(line.decode())

    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/completions", json=completion()) as response,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read(response), timeout=0.5)
    assert len(events) == 2 and all("tok" in e for e in events)


async def test_truncate_ends_without_finish_or_done(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server, behaviour="truncate", fault_after=3)
    result = await stream(url, completion(max_tokens=10, stream_options={"include_usage": True}))
    assert result.status == 200 and len(result.content_events()) == 3
    assert result.finish_reason() is None and not result.done and result.usage() is None


@pytest.mark.parametrize("behaviour", ["malformed", "not-chunk"])
async def test_malformed_and_not_chunk_events(aiohttp_server: Any, behaviour: str) -> None:
    url, _ = await start(aiohttp_server, behaviour=behaviour, fault_after=1)
    result = await stream(url, completion())
    last = result.events[-1].data
    if behaviour == "malformed":
        with pytest.raises(json.JSONDecodeError):
            json.loads(last)
    else:
        assert json.loads(last) == {"unexpected": True}
    assert len(result.events) == 2 and not result.done


async def test_no_first_token_finishes_properly_with_nothing(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server, behaviour="no-first-token")
    for body in (completion(), chat()):
        result = await stream(url, {**body, "stream_options": {"include_usage": True}})
        assert result.content_events() == [] and result.done and result.finish_reason() == "stop"
        assert result.usage() is not None and result.usage()["completion_tokens"] == 0  # type: ignore[index]


async def test_error_event_then_done(aiohttp_server: Any) -> None:
    url, _ = await start(aiohttp_server, behaviour="error-event", fault_after=1)
    result = await stream(url, chat())
    assert result.done and result.events[-2].json["error"]["code"] == 500
    assert len(result.content_events()) == 1


async def test_faults_start_at_fault_from_and_spare_short_prompts(aiohttp_server: Any) -> None:
    url, _ = await start(
        aiohttp_server, behaviour="truncate", fault_after=0, fault_from=2, fault_min_prompt_tokens=5
    )
    first = await stream(url, completion())
    short = await stream(url, {**completion(), "prompt": "a b"})
    long = await stream(url, completion())
    assert first.done and short.done and not long.done and long.content_events() == []


@pytest.mark.parametrize("behaviour", [b for b in BEHAVIOURS if b not in ("healthy", "stall")])
async def test_non_streamed_faults_are_not_a_clean_answer(aiohttp_server: Any, behaviour: str) -> None:
    url, _ = await start(aiohttp_server, behaviour=behaviour)
    status, raw = await post(url, "/v1/completions", completion(stream=False))
    if behaviour == "no-first-token":
        answer = json.loads(raw)
        assert (
            status == 200 and answer["choices"][0]["text"] == "" and answer["usage"]["completion_tokens"] == 0
        )
    elif behaviour == "error-event":
        assert status == 500
    elif behaviour == "not-chunk":
        assert "choices" not in json.loads(raw)
    else:
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)


# ---- as a process ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_process_prints_its_port_and_serves_the_options(tmp_path: Path) -> None:
    report = tmp_path / "exit.json"
    proc = Proc(fake_llm_command(0, "--bucket", "16:0.05:0.0:0.2", "--served-models", "a,b",
                                 "--exit-report", str(report)))  # fmt: skip
    try:
        line = proc.expect("ready ", timeout=30)
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        status, listed = await get_json(url, "/v1/models")
        assert [m["id"] for m in listed["data"]] == ["a", "b"]
        result = await stream(url, {**completion(), "model": "tiny"})
        assert result.status == 404
        status, stats = await get_json(url, "/stats")
        assert status == 200 and stats["requests"] == 0
        assert (await stream(url, {**completion(max_tokens=3), "model": "b"})).status == 200
    finally:
        proc.close()
    assert proc.popen.returncode == 0, proc.output
    exit_report = json.loads(report.read_text())
    assert exit_report["stats"]["requests"] == 1 and exit_report["stats"]["tokens_sent"] == 3
    assert exit_report["cpu_s"] > 0
