"""A plain Server-Sent Events reader for the LLM-server tests (independent of warmgate's own client,
so those tests check the servers, not warmgate).

`post_stream` sends one OpenAI-style request and returns every `data:` event with its arrival time
(seconds after the request was sent), decoded where it is JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

DONE = "[DONE]"


@dataclass
class Event:
    at_s: float
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    status: int
    content_type: str
    events: list[Event] = field(default_factory=list)
    # True when the body ended without a trailing blank line: an event cut in the middle.
    cut: bool = False

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The JSON objects of the stream, without [DONE]."""
        return [e.json for e in self.events if e.data != DONE]

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1].data == DONE

    def content_events(self) -> list[Event]:
        """Events that carry generated text (chat delta.content or completion text), non-empty."""
        out = []
        for event in self.events:
            if event.data == DONE:
                continue
            for choice in event.json.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or choice.get("text")
                if text:
                    out.append(event)
                    break
        return out

    def usage(self) -> dict[str, Any] | None:
        for chunk in reversed(self.chunks):
            if chunk.get("usage"):
                usage: dict[str, Any] = chunk["usage"]
                return usage
        return None

    def finish_reason(self) -> str | None:
        for chunk in reversed(self.chunks):
            for choice in chunk.get("choices") or []:
                if choice.get("finish_reason"):
                    return str(choice["finish_reason"])
        return None


async def post_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout_s: float = 60.0
) -> Stream:
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.post(url, json=body, timeout=timeout) as response:
        stream = Stream(response.status, response.headers.get("Content-Type", ""))
        pending: list[str] = []
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                pending.append(line[5:].lstrip(" "))
            elif not line and pending:
                stream.events.append(Event(time.perf_counter() - started, "\n".join(pending)))
                pending = []
        if pending:
            stream.cut = True
            stream.events.append(Event(time.perf_counter() - started, "\n".join(pending)))
    return stream
