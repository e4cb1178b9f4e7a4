"""protocol openai: reading an answer as it arrives (protocols/llmstream.py through OpenAIAdapter.send).

SSE decoding is checked with the stream split at every byte; `send` against small aiohttp servers
that write exactly the bytes a test chooses, when it chooses: time to first token and token gaps,
usage, and each way a stream fails, as its own failure kind with a one-line reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from warmgate.config import PromptSpec, validate_config
from warmgate.protocols import adapters, llmstream, make_adapter
from warmgate.protocols.base import Result
from warmgate.protocols.llmstream import SseDecoder, StreamFault
from warmgate.protocols.openai import OpenAIAdapter

TIMEOUT = aiohttp.ClientTimeout(total=5)
# A stream as vLLM sends it: role chunk, content chunks, finish, usage, [DONE].
CHAT = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " a"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " b"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": " c"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}},
]

# One write of the server: bytes, sent after `delay` seconds.
Write = tuple[float, bytes]
Start = Callable[..., Awaitable[OpenAIAdapter]]


def event(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def stream_of(*chunks: Any, done: bool = True, delay: float = 0.0) -> list[Write]:
    writes = [(delay, event(chunk)) for chunk in chunks]
    return [*writes, (0.0, event("[DONE]"))] if done else writes


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def start(aiohttp_server: Any) -> Start:
    """An adapter for a server answering every generation request with `writes` (or `whole`)."""

    async def run(
        writes: Sequence[Write] = (),
        *,
        whole: web.Response | None = None,
        content_type: str = "text/event-stream",
        cut_connection: bool = False,
        **openai: Any,
    ) -> OpenAIAdapter:
        async def generate(request: web.Request) -> web.StreamResponse:
            if whole is not None:
                return whole
            response = web.StreamResponse(headers={"Content-Type": content_type})
            await response.prepare(request)
            for delay, data in writes:
                if delay:
                    await asyncio.sleep(delay)
                await response.write(data)
            if cut_connection:
                assert request.transport is not None
                request.transport.close()  # mid-answer, without the chunked terminator
                return response
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/chat/completions", generate)
        app.router.add_post("/v1/completions", generate)
        server: TestServer = await aiohttp_server(app)
        raw = {
            "server": {
                "url": str(server.make_url("")).rstrip("/"),
                "protocol": "openai",
                "model": "tiny",
                "request_timeout_s": 5,
                "openai": openai,
            },
            "shapes": [{"name": "p", "prompt": {"tokens": 8}}],
        }
        adapter = make_adapter(validate_config(raw, "w", {}, protocols=adapters()).server)
        assert isinstance(adapter, OpenAIAdapter)
        return adapter

    return run


async def complete(
    adapter: OpenAIAdapter, session: aiohttp.ClientSession, *, stream: bool = True, chat: bool = True
) -> Result:
    request = adapter.build_prompt(PromptSpec(tokens=8, max_tokens=3, stream=stream, chat=chat), "words")
    return await adapter.send(session, request, TIMEOUT)


# ---- SSE decoding -----------------------------------------------------------------------------

RAW_STREAM = (
    b": a comment first\r\n"
    b'data: {"n": 1}\r\n\r\n'
    b'event: message\nid: 7\ndata: {"n": 2}\n\n'
    b'data: {"n":\ndata: 3}\r\r'  # two data lines of one event, CR line ends
    b"retry: 10\n"
    b'data:{"n": 4}\n\n'  # no space after the colon
    b"data: [DONE]\r\n\r\n"
)
EXPECTED = [b'{"n": 1}', b'{"n": 2}', b'{"n":\n3}', b'{"n": 4}', b"[DONE]"]


def decode(pieces: Sequence[bytes]) -> list[bytes]:
    decoder = SseDecoder()
    events = [data for piece in pieces for data, _ in decoder.feed(piece)]
    return events + [data for data, _ in decoder.close()]


@pytest.mark.parametrize("cut", range(1, len(RAW_STREAM)))
def test_events_are_the_same_wherever_the_stream_is_split(cut: int) -> None:
    assert decode([RAW_STREAM[:cut], RAW_STREAM[cut:]]) == EXPECTED


def test_events_arrive_byte_by_byte() -> None:
    assert decode([RAW_STREAM[i : i + 1] for i in range(len(RAW_STREAM))]) == EXPECTED
    assert decode([RAW_STREAM]) == EXPECTED


def test_an_event_without_its_blank_line_still_counts_at_the_end() -> None:
    assert decode([b'data: {"n": 1}\n']) == [b'{"n": 1}']


def test_a_stream_cut_inside_a_line_is_truncated() -> None:
    with pytest.raises(StreamFault) as raised:
        decode([b'data: {"n": 1}\n\ndata: {"n"'])
    assert raised.value.kind == "stream_truncated"
    assert str(raised.value) == 'the stream ended inside an event: data: {"n"'


def test_an_endless_line_is_refused_before_it_fills_memory() -> None:
    decoder = SseDecoder(max_line_bytes=100)
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(StreamFault, match="a line of the stream is over 100 bytes") as raised:
        decoder.feed(b"x" * 20)
    assert raised.value.kind == "stream_malformed"
    many_lines = SseDecoder(max_line_bytes=100)
    with pytest.raises(StreamFault, match="an event of the stream is over 100 bytes"):
        many_lines.feed(b"data: " + b"y" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")


def test_an_error_event_is_marked() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"event: error\ndata: boom\n\ndata: ok\n\n") == [(b"boom", True), (b"ok", False)]


# ---- measurements ------------------------------------------------------------------------------


async def test_a_stream_gives_ttft_gaps_usage_and_its_text(start: Start, session: Any) -> None:
    writes = [(0.0, event(CHAT[0])), (0.15, event(CHAT[1])), (0.05, event(CHAT[2])), (0.05, event(CHAT[3]))]
    writes += [(0.0, event(CHAT[4])), (0.0, event(CHAT[5])), (0.0, event("[DONE]"))]
    adapter = await start(writes)
    result = await complete(adapter, session)
    assert result.ok, result.message
    generation = result.generation
    assert generation is not None
    # The role-only chunk is not a token: the first token came after 0.15 s.
    assert 0.15 <= generation.ttft_s < result.latency_s
    assert len(generation.gaps_s) == 2 and all(0.05 <= gap < 1 for gap in generation.gaps_s)
    assert (generation.output_tokens, generation.prompt_tokens) == (3, 9)
    assert adapter.decode(result.body)["text"].data == [" a b c"]


async def test_without_usage_the_content_events_are_counted(start: Start, session: Any) -> None:
    adapter = await start(stream_of(*CHAT[:5]))
    result = await complete(adapter, session)
    assert result.ok and result.generation is not None
    assert (result.generation.output_tokens, result.generation.prompt_tokens) == (3, None)


async def test_a_finish_reason_without_done_is_a_complete_stream(start: Start, session: Any) -> None:
    # transformers serve ends its streams so.
    adapter = await start(stream_of(*CHAT, done=False))
    assert (await complete(adapter, session)).ok


async def test_completions_stream_and_reasoning_tokens_count(start: Start, session: Any) -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "text": " x", "finish_reason": "stop"}]},
    ]
    adapter = await start(stream_of(*chunks))
    result = await complete(adapter, session)
    assert result.ok and result.generation is not None and result.generation.output_tokens == 2


async def test_a_whole_answer_has_ttft_equal_to_its_latency(start: Start, session: Any) -> None:
    answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi there"}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    adapter = await start(whole=web.json_response(answer))
    result = await complete(adapter, session, stream=False)
    assert result.ok and result.generation is not None
    assert result.generation.ttft_s == pytest.approx(result.latency_s, abs=0.01)
    assert result.generation.gaps_s == () and result.generation.output_tokens == 2


async def test_a_whole_answer_without_usage_has_no_token_count(start: Start, session: Any) -> None:
    answer = {"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]}
    adapter = await start(whole=web.json_response(answer))
    result = await complete(adapter, session, stream=False, chat=False)
    assert result.ok and result.generation is not None and result.generation.output_tokens is None


# ---- failures ----------------------------------------------------------------------------------


def failed(result: Result, kind: str) -> str:
    assert result.kind == kind, (result.kind, result.message)
    assert result.generation is None and "\n" not in result.message
    return result.message


async def test_stalled(start: Start, session: Any) -> None:
    writes = [*stream_of(*CHAT[:3], done=False), (3.0, event(CHAT[3]))]
    adapter = await start(writes, stall_timeout_s=0.2)
    result = await complete(adapter, session)
    message = failed(result, "stream_stalled")
    assert message.startswith("the stream stalled: nothing for 0.2s after token 2 from POST http://")
    assert 0.2 <= result.latency_s < 2


async def test_no_first_token_in_time_is_a_timeout_not_a_stall(start: Start, session: Any) -> None:
    adapter = await start([(0.0, event(CHAT[0])), (3.0, event(CHAT[1]))], stall_timeout_s=0.1)
    request = adapter.build_prompt(PromptSpec(tokens=8), "words")
    result = await adapter.send(session, request, aiohttp.ClientTimeout(total=0.5))
    assert failed(result, "timeout").startswith(
        "no first token within 0.5s (server.request_timeout_s) from POST"
    )


@pytest.mark.parametrize(
    ("writes", "cut", "kind", "reason"),
    [
        (stream_of(*CHAT[:3], done=False), False, "stream_truncated",
         "the stream ended after 2 tokens without a finish_reason or data: [DONE]"),
        ([*stream_of(*CHAT[:2], done=False), (0.0, b'data: {"choices": [{"ind')], False, "stream_truncated",
         'the stream ended inside an event: data: {"choices": [{"ind'),
        (stream_of(*CHAT[:3], done=False), True, "stream_truncated", "the connection dropped after 2 tokens"),
        ([*stream_of(*CHAT[:2], done=False), (0.0, event("<html>oops</html>"))], False, "stream_malformed",
         "an event that is not JSON: <html>oops</html>"),
        ([*stream_of(*CHAT[:2], done=False), (0.0, event({"object": "list"}))], False, "stream_malformed",
         'an event without a choices list: {"object": "list"}'),
        ([*stream_of(*CHAT[:2], done=False), (0.0, event([1, 2]))], False, "stream_malformed",
         "an event that is a JSON array, not a chunk: [1, 2]"),
        ([*stream_of(*CHAT[:2], done=False), (0.0, event({"error": {"message": "out of memory"}}))], False,
         "stream_error", "the server reported an error in the stream: out of memory"),
        ([*stream_of(*CHAT[:2], done=False), (0.0, b"event: error\ndata: engine dead\n\n")], False,
         "stream_error", "an event that is not JSON: engine dead"),
        (stream_of(CHAT[0], CHAT[4]), False, "no_first_token",
         "the stream finished (finish_reason length) without a token"),
        ([*stream_of(*CHAT), (0.0, event(CHAT[1]))], False, "stream_malformed",
         "an event after data: [DONE]"),
    ],
    ids=["no-finish", "cut-in-event", "connection-dropped", "not-json", "not-a-chunk", "array",
         "error-event", "event-error", "no-token", "after-done"],
)  # fmt: skip
async def test_each_stream_fault_has_its_kind(
    start: Start, session: Any, writes: list[Write], cut: bool, kind: str, reason: str
) -> None:
    adapter = await start(writes, cut_connection=cut)
    message = failed(await complete(adapter, session), kind)
    assert message.startswith(reason), message
    assert message.endswith("/v1/chat/completions")


async def test_a_json_answer_to_a_stream_request_is_malformed(start: Start, session: Any) -> None:
    adapter = await start(whole=web.json_response({"choices": [{"index": 0, "text": "x"}]}))
    message = failed(await complete(adapter, session), "stream_malformed")
    assert message.startswith("asked for a stream (prompt.stream: true), got Content-Type application/json")


async def test_a_stream_over_the_cap_is_abandoned(
    start: Start, session: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llmstream, "MAX_ANSWER_BYTES", 2048)
    token = {"choices": [{"index": 0, "text": " t", "finish_reason": None}]}
    adapter = await start([(0.0, event(token))] * 100, content_type="text/event-stream; charset=utf-8")
    message = failed(await complete(adapter, session), "stream_malformed")
    assert message.startswith("the stream is over the cap on an answer (2,048 bytes)")


@pytest.mark.parametrize(
    ("response", "stream", "kind", "reason"),
    [
        (web.Response(status=500, text='{"error": "boom"}'), True, "http_500", 'HTTP 500 from POST '),
        (web.Response(text="<html>", content_type="application/json"), False, "invalid_response",
         "response is not JSON"),
        (web.json_response({"object": "list"}), False, "invalid_response", "answer has no choices"),
        (web.json_response({"error": {"message": "bad"}}), False, "invalid_response",
         "answer carries an error: bad"),
        (web.json_response({"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "stop"}]}),
         False, "no_first_token", "the answer (finish_reason stop) has no generated text"),
    ],
    ids=["http-500", "not-json", "no-choices", "error", "empty"],
)  # fmt: skip
async def test_failed_whole_answers(
    start: Start, session: Any, response: web.Response, stream: bool, kind: str, reason: str
) -> None:
    adapter = await start(whole=response)
    message = failed(await complete(adapter, session, stream=stream), kind)
    assert message.startswith(reason), message


async def test_a_refused_connection_is_a_connection_failure(session: Any) -> None:
    raw = {"server": {"url": "http://127.0.0.1:9", "protocol": "openai", "model": "tiny"}}
    adapter = make_adapter(validate_config(raw, "w", {}, protocols=adapters()).server)
    assert isinstance(adapter, OpenAIAdapter)
    message = failed(await complete(adapter, session), "connection")
    assert message.startswith("POST http://127.0.0.1:9/v1/chat/completions: cannot connect")
