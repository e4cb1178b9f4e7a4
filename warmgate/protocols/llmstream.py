"""Reading an LLM completion as it arrives: server-sent events (SSE) decoded incrementally, the
time to first token and the gaps between tokens taken as the events arrive, and every way a
stream can go wrong named as one failure kind. Used by the openai protocol (protocols/openai.py).

A stream is untrusted input like any answer: bytes are decoded as they come, split anywhere (an
event, a line ending, even a CRLF may straddle two reads); the whole stream is capped at
`MAX_ANSWER_BYTES` and one line at `MAX_LINE_BYTES`; each event's JSON is parsed with the depth
the C parser allows and checked for the fields read. Nothing here raises anything but
`StreamFault` for any input.

Failure kinds, besides the transport's `timeout`, `connection` and `http_<status>`:

- `stream_stalled`: after its first token, the stream sent nothing for the stall limit;
- `stream_truncated`: the stream ended (or the connection dropped) without a finish_reason or
  `data: [DONE]`, or inside an event;
- `stream_malformed`: an event that is not JSON, or JSON that is not a completion chunk (no
  `choices` list), or an answer that is not a stream at all;
- `stream_error`: the server reported an error inside the stream (`{"error": ...}`, as vLLM does
  when generation fails after the 200 was sent);
- `no_first_token`: the answer finished properly without one content token.

Timing: every event in one network read gets that read's arrival time, which is when the client
could have shown it: tokens a server sends in one write are one event apart by 0 s.
"""

from __future__ import annotations

import asyncio
import json
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from warmgate.protocols.answers import MAX_ANSWER_BYTES, cut, json_type, show
from warmgate.protocols.failures import (
    INVALID,
    NO_FIRST_TOKEN,
    STREAM_ERROR,
    STREAM_MALFORMED,
    STREAM_STALLED,
    STREAM_TRUNCATED,
)

# One SSE line (one chunk of JSON): a token is a few bytes, a chunk with usage a few hundred. A
# megabyte without a line end is not a chunk, and buffering it further is a memory hazard.
MAX_LINE_BYTES = 1 << 20
# Characters of an event quoted in a reason.
EVENT_CHARS = 80
DONE = b"[DONE]"
EVENT_STREAM = "text/event-stream"
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Where a choice carries generated text: completions' `text`, chat's `delta.content` (and a
# reasoning model's `delta.reasoning_content` / `delta.reasoning`, which are tokens a user
# waits for just the same).
_DELTA_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")


class StreamFault(Exception):
    """A stream that is not a healthy completion: `kind` is one of STREAM_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class SseDecoder:
    """Server-sent events, incrementally: bytes in, split anywhere; each complete event's data
    out. Lines end in LF, CRLF or CR; `data:` lines of one event are joined with LF; comments
    (`:`) and the `id`/`retry` fields are skipped; `event: error` marks an error event."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._rest = b""
        self._data: bytes | None = None
        self._error_event = False

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        """(data, whether it came as `event: error`) of every event this chunk completed."""
        text = self._rest + chunk if self._rest else chunk
        # A CR at the very end may be the first half of a CRLF: hold it until the next read.
        held = text.endswith(b"\r")
        *lines, rest = _LINE_END.split(text[:-1] if held else text)
        self._rest = rest + b"\r" if held else rest
        if len(self._rest) > self.max_line_bytes:
            raise StreamFault(
                STREAM_MALFORMED, f"a line of the stream is over {self.max_line_bytes:,} bytes without an end"
            )
        events: list[tuple[bytes, bool]] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[tuple[bytes, bool]]:
        """At the end of the stream: an event whose blank line never came still counts; a line
        cut off in the middle is a truncated stream."""
        rest, self._rest = self._rest, b""
        if rest.rstrip(b"\r"):
            raise StreamFault(STREAM_TRUNCATED, f"the stream ended inside an event: {_quote(rest)}")
        events: list[tuple[bytes, bool]] = []
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[tuple[bytes, bool]]) -> None:
        if not line:  # a blank line dispatches the event
            if self._data is not None:
                events.append((self._data, self._error_event))
            self._data, self._error_event = None, False
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data = value if self._data is None else self._data + b"\n" + value
            if len(self._data) > self.max_line_bytes:
                raise StreamFault(
                    STREAM_MALFORMED, f"an event of the stream is over {self.max_line_bytes:,} bytes"
                )
        elif name == b"event":
            self._error_event = value.strip() == b"error"


@dataclass
class Completion:
    """What one completion (streamed or not) said and how its tokens arrived."""

    started: float
    texts: list[str] = field(default_factory=list)
    first_at: float | None = None
    last_at: float | None = None
    gaps: array[float] = field(default_factory=lambda: array("d"))
    events: int = 0
    finish_reason: str | None = None
    done: bool = False
    completion_tokens: int | None = None
    prompt_tokens: int | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_at is None else self.first_at - self.started

    @property
    def output_tokens(self) -> int:
        """The server's own count where it sent usage, else one per content event."""
        return self.completion_tokens if self.completion_tokens is not None else self.events

    def token(self, text: str, now: float) -> None:
        if self.last_at is None:
            self.first_at = now
        else:
            self.gaps.append(now - self.last_at)
        self.last_at = now
        self.events += 1
        self.texts.append(text)

    def answer(self) -> dict[str, Any]:
        """The completion as one non-streamed answer would carry it (what `parse` reads)."""
        document: dict[str, Any] = {
            "choices": [{"index": 0, "text": "".join(self.texts), "finish_reason": self.finish_reason}]
        }
        if self.completion_tokens is not None or self.prompt_tokens is not None:
            document["usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }
        return document


def read_event(completion: Completion, data: bytes, error_event: bool, now: float) -> None:
    """One event of the stream into `completion`; StreamFault when it is not a healthy chunk."""
    if data == DONE:
        completion.done = True
        return
    if completion.done:
        raise StreamFault(STREAM_MALFORMED, f"an event after data: [DONE]: {_quote(data)}")
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        kind = STREAM_ERROR if error_event else STREAM_MALFORMED
        raise StreamFault(kind, f"an event that is not JSON: {_quote(data)}") from None
    if not isinstance(chunk, dict):
        raise StreamFault(
            STREAM_MALFORMED, f"an event that is a JSON {json_type(chunk)}, not a chunk: {_quote(data)}"
        )
    if chunk.get("error") or error_event:
        raise StreamFault(STREAM_ERROR, f"the server reported an error in the stream: {server_error(chunk)}")
    read_usage(completion, chunk)
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise StreamFault(STREAM_MALFORMED, f"an event without a choices list: {_quote(data)}")
    for choice in choices:
        if not isinstance(choice, dict):
            raise StreamFault(STREAM_MALFORMED, f"a choice that is not an object: {_quote(data)}")
        text = choice_text(choice, streamed=True)
        if text:
            completion.token(text, now)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            completion.finish_reason = finish


async def read_stream(
    response: aiohttp.ClientResponse, completion: Completion, clock: Callable[[], float], stall_s: float
) -> None:
    """A streamed answer, read as it arrives, into `completion`; StreamFault unless it is a
    healthy completion stream. The caller's request timeout bounds the whole read; `stall_s`
    bounds each silence once the first token came (before it, a long prompt's prefill is not a
    stall)."""
    content_type = response.headers.get("Content-Type", "")
    if not content_type.startswith(EVENT_STREAM):
        raise StreamFault(
            STREAM_MALFORMED,
            f"asked for a stream (prompt.stream: true), got Content-Type {cut(content_type, 60) or 'none'}",
        )
    decoder = SseDecoder()
    loop = asyncio.get_running_loop()
    size = 0
    stall: asyncio.Timeout | None = None
    try:
        async with asyncio.timeout(None) as stall:
            while True:
                if completion.first_at is not None:
                    stall.reschedule(loop.time() + stall_s)
                chunk = await response.content.readany()
                if not chunk:
                    break
                now = clock()
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise StreamFault(
                        STREAM_MALFORMED,
                        f"the stream is over the cap on an answer ({MAX_ANSWER_BYTES:,} bytes)",
                    )
                for data, error_event in decoder.feed(chunk):
                    read_event(completion, data, error_event, now)
    except TimeoutError:
        if stall is not None and stall.expired():
            raise StreamFault(
                STREAM_STALLED,
                f"the stream stalled: nothing for {stall_s:g}s after token {completion.events}",
            ) from None
        raise
    finish_stream(completion, decoder, clock())


def finish_stream(completion: Completion, decoder: SseDecoder, now: float) -> None:
    """The stream ended: raise StreamFault unless it ended as a completion should."""
    for data, error_event in decoder.close():
        read_event(completion, data, error_event, now)
    if not completion.done and completion.finish_reason is None:
        raise StreamFault(
            STREAM_TRUNCATED,
            f"the stream ended after {completion.events} tokens without a finish_reason or data: [DONE]",
        )
    if completion.events == 0:
        raise StreamFault(
            NO_FIRST_TOKEN,
            f"the stream finished (finish_reason {completion.finish_reason or 'none'}) without a token",
        )


def read_answer(completion: Completion, document: Any) -> None:
    """A non-streamed answer (already parsed JSON) into `completion`; StreamFault (kind
    `invalid_response`, or `no_first_token`) when it carries no completion."""
    if not isinstance(document, dict):
        raise StreamFault(INVALID, f"answer is a JSON {json_type(document)}, not a completion")
    if document.get("error"):
        raise StreamFault(INVALID, f"answer carries an error: {server_error(document)}")
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise StreamFault(INVALID, "answer has no choices")
    read_usage(completion, document)
    completion.finish_reason = _text_or_none(choices[0].get("finish_reason"))
    text = choice_text(choices[0], streamed=False)
    if not text:
        raise StreamFault(
            NO_FIRST_TOKEN,
            f"the answer (finish_reason {completion.finish_reason or 'none'}) has no generated text",
        )
    completion.texts.append(text)
    completion.events = 1


def choice_text(choice: dict[str, Any], *, streamed: bool) -> str:
    """The generated text a choice carries ('' when none): completions' `text`, a chat answer's
    `message` or a chat stream's `delta` (whichever the choice has: some servers answer one
    endpoint in the other's form)."""
    text = choice.get("text")
    if isinstance(text, str) and text:
        return text
    holder = choice.get("delta" if streamed else "message")
    if isinstance(holder, dict):
        for name in _DELTA_TEXT_FIELDS:
            text = holder.get(name)
            if isinstance(text, str) and text:
                return text
    return ""


def read_usage(completion: Completion, document: dict[str, Any]) -> None:
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return
    for name, attribute in (("completion_tokens", "completion_tokens"), ("prompt_tokens", "prompt_tokens")):
        value = usage.get(name)
        if type(value) is int and 0 <= value < 1 << 40:
            setattr(completion, attribute, value)


def server_error(document: dict[str, Any]) -> str:
    """The server's own error message, one line."""
    error = document.get("error")
    if isinstance(error, dict):
        error = error.get("message", error)
    if not error:
        error = document
    return cut(error if isinstance(error, str) else show(error, 200), 200)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _quote(data: bytes) -> str:
    return cut(data.decode("utf-8", "replace"), EVENT_CHARS)
