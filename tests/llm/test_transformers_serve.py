"""The real OpenAI-compatible server works as the `protocol: openai` tests assume: `transformers
serve` from PyPI on the tiny model built here, spoken to with plain aiohttp (not warmgate's client).

What these tests pin down about transformers serve 5.24 (the facts warmgate's openai protocol
must cope with): the model id is the directory path as given; usage comes with the last chunk
whether or not `stream_options.include_usage` is asked for (the option is ignored); the stream
ends with that finish_reason chunk and no `data: [DONE]`; a chat stream opens with a role-only
chunk (no content, so not a first token); a request naming another model gets 400, and a field
outside the OpenAI schema (e.g. vLLM's `ignore_eos`) gets 422.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support import tinyllm
from tests.support.llm_fixtures import StartServer
from tests.support.sseclient import post_stream
from tests.support.tinyllm import TransformersServe

TEXT = "the model server is warm and ready for traffic after the gate"
WORDS = TEXT.split()


def prompt(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> tuple[int, dict]:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=60)) as response:
        return response.status, json.loads(await response.read())


async def test_health_and_models_list_the_model_by_its_path(
    llm_server: TransformersServe, session: aiohttp.ClientSession
) -> None:
    async with session.get(llm_server.url + "/health") as response:
        assert response.status == 200
    async with session.get(llm_server.url + "/v1/models") as response:
        assert response.status == 200
        listed = [m["id"] for m in (await response.json())["data"]]
    assert listed == [llm_server.model] and llm_server.model == str(llm_server.model_dir)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_non_streamed_answer_reports_usage_and_runs_to_max_tokens(
    llm_server: TransformersServe, session: aiohttp.ClientSession, chat: bool
) -> None:
    text = prompt(20)
    if chat:
        body = {"model": llm_server.model, "messages": [{"role": "user", "content": text}], "max_tokens": 7}
        status, answer = await post_json(session, llm_server.url + "/v1/chat/completions", body)
        generated = answer["choices"][0]["message"]["content"]
    else:
        body = {"model": llm_server.model, "prompt": text, "max_tokens": 7}
        status, answer = await post_json(session, llm_server.url + "/v1/completions", body)
        generated = answer["choices"][0]["text"]
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 7
    assert answer["choices"][0]["finish_reason"] == "length"
    assert generated.strip() and generated.isascii()


async def test_chat_template_adds_to_the_prompt_count(
    llm_server: TransformersServe, session: aiohttp.ClientSession
) -> None:
    """The server's prompt count for chat includes its template: calibration must use its count."""
    text = prompt(30)
    plain = {"model": llm_server.model, "prompt": text, "max_tokens": 1}
    chat = {"model": llm_server.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
    _, plain_answer = await post_json(session, llm_server.url + "/v1/completions", plain)
    _, chat_answer = await post_json(session, llm_server.url + "/v1/chat/completions", chat)
    plain_tokens = plain_answer["usage"]["prompt_tokens"]
    assert 20 <= plain_tokens <= 60, plain_tokens
    assert chat_answer["usage"]["prompt_tokens"] > plain_tokens


async def test_prompt_count_grows_with_the_prompt_up_to_thousands_of_tokens(
    llm_server: TransformersServe, session: aiohttp.ClientSession
) -> None:
    counts = []
    for words in (10, 100, 1500):
        body = {"model": llm_server.model, "prompt": prompt(words), "max_tokens": 1}
        status, answer = await post_json(session, llm_server.url + "/v1/completions", body)
        assert status == 200, answer
        counts.append(answer["usage"]["prompt_tokens"])
    assert counts == sorted(counts) and counts[0] < counts[1] < counts[2]
    assert counts[2] >= 1500, counts


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_stream_has_one_content_event_per_token_then_usage_and_no_done(
    llm_server: TransformersServe, session: aiohttp.ClientSession, chat: bool
) -> None:
    body: dict[str, object] = {
        "model": llm_server.model,
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        body["messages"] = [{"role": "user", "content": prompt(40)}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt(40)
        path = "/v1/completions"
    stream = await post_stream(session, llm_server.url + path, body)
    assert stream.status == 200 and stream.content_type.startswith("text/event-stream")
    assert not stream.cut
    content = stream.content_events()
    assert len(content) == 12, [e.data for e in stream.events]
    times = [e.at_s for e in content]
    assert times == sorted(times) and times[0] > 0
    assert stream.finish_reason() == "length"
    usage = stream.usage()
    assert usage is not None and usage["completion_tokens"] == 12 and usage["prompt_tokens"] >= 40
    assert not stream.done, "transformers serve now ends streams with [DONE]: update the docstring"
    if chat:
        opening = stream.chunks[0]["choices"][0]
        assert opening["delta"] == {"role": "assistant"}, "the role-only chunk comes first"


async def test_concurrent_streams_all_complete(
    llm_server: TransformersServe, session: aiohttp.ClientSession
) -> None:
    url = llm_server.url + "/v1/completions"
    bodies = [
        {"model": llm_server.model, "prompt": f"{i} {prompt(30)}", "max_tokens": 8, "stream": True}
        for i in range(4)
    ]
    streams = await asyncio.gather(*(post_stream(session, url, b) for b in bodies))
    for stream in streams:
        assert stream.status == 200
        assert len(stream.content_events()) == 8
        usage = stream.usage()
        assert usage is not None and usage["completion_tokens"] == 8
        assert usage["total_tokens"] == usage["prompt_tokens"] + 8


async def test_other_model_and_non_openai_fields_are_refused(
    llm_server: TransformersServe, session: aiohttp.ClientSession
) -> None:
    url = llm_server.url + "/v1/completions"
    status, answer = await post_json(session, url, {"model": "other", "prompt": "x", "max_tokens": 1})
    assert status == 400 and "pinned" in answer["detail"]
    body = {"model": llm_server.model, "prompt": "x", "max_tokens": 1, "ignore_eos": True}
    status, answer = await post_json(session, url, body)
    assert status == 422 and "ignore_eos" in answer["detail"]


def test_build_is_deterministic(tiny_llm_model: Path, tmp_path: Path) -> None:
    again = tinyllm.build_model(tmp_path / "again")

    def digests(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    assert digests(again) == digests(tiny_llm_model)
    assert "model.safetensors" in digests(again) and "tokenizer.json" in digests(again)


def test_a_fresh_server_starts_on_its_own_port_and_stops_on_term(start_llm_server: StartServer) -> None:
    server = start_llm_server()
    port = int(server.url.rsplit(":", 1)[1])
    assert port > 0
    assert tinyllm.http_get(server.url + "/health")[0] == 200
    code = server.stop()
    # uvicorn shuts down on TERM, then re-raises it: killed by SIGTERM, not by the KILL after it.
    assert code == -15, server.output[-2000:]
    assert tinyllm.http_get(server.url + "/health", timeout=1.0)[0] == 0
    assert "Finished server process" in server.output


@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_venv_skips_outside_ci_and_fails_in_it(
    ci: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tinyllm, "LLM_PYTHON", tmp_path / "missing" / "python")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match=r"llm-venv|transformers serve") as raised:
        tinyllm.require_llm_venv()
    assert ("CI must run this test" in str(raised.value)) == bool(ci)
    assert os.environ["CI"] == ci
