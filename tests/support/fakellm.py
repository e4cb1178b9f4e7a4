"""A fake OpenAI-compatible LLM server (vLLM-style) with timings and faults chosen per start, for
the `protocol: openai` engine tests. Over 400 lines: one behaviour table, its HTTP handlers and its
command line belong together, and each fault is a few lines.

Endpoints
  GET  /health                 200 (503 for the first `ready_after_s` seconds after start)
  GET  /v1/models              lists `listed_models` (default: [model])
  POST /v1/completions         {"model", "prompt", "max_tokens", "stream", "stream_options"}
  POST /v1/chat/completions    {"model", "messages", "max_tokens", "stream", "stream_options"}
  POST /tokenize               vLLM style: {"model", "prompt"} or {"model", "messages"}
                               -> {"count", "max_model_len", "tokens"} (404 with tokenize=False)
  GET  /stats                  what the server saw, as JSON (see Stats), for tests in another process

Fake tokenizer: one token per whitespace-separated word. A completion's prompt counts its words;
a chat prompt counts, per message, its content's words + CHAT_TOKENS_PER_MESSAGE (the role and the
template's markers), + CHAT_TOKENS_GENERATION_PROMPT once, like a real chat template. Requests
naming a model not in `served_models` get 404 (vLLM's error body); prompt + max_tokens over
`max_model_len` gets 400; fields outside the OpenAI schema are accepted and ignored.

Answers: `max_tokens` tokens, each the text " tokN" (so the answer's words = its tokens), then
finish_reason "length". Streams are SSE `data: <chunk>` events, one token per event, ending in
`data: [DONE]`; a chat stream opens with a role-only chunk, as vLLM's does. Usage: a non-streamed
answer always carries it; a stream sends a final chunk with `"choices": []` and usage when the
request asks (`stream_options.include_usage`), or always/never (`usage="always"|"never"`).

Timings (healthy): the first token comes `ttft_s` after the request (prefill), then one every
`itl_s`, plus `itl_load_s` per other stream in progress (a loaded server decodes slower). Both
can differ per prompt length through `buckets`: (up to N prompt tokens, ttft_s, itl_s, cold_s),
the first bucket that fits wins, the last one takes longer prompts. The first request of each
bucket also pays that bucket's `cold_s` before its first token (a JIT or graph capture per
sequence length), once per server start. A non-streamed answer takes ttft + (n - 1) * itl.

Faults (`behaviour`), from the `fault_from`-th generation request on (1-based; earlier ones are
healthy) and only for prompts of at least `fault_min_prompt_tokens` tokens; mid-stream faults hit
after `fault_after` content tokens:
  healthy         no fault
  stall           stream: sends `fault_after` tokens, then nothing for `stall_s` (the connection
                  stays open), then ends; non-streamed: no answer for `stall_s`
  truncate        stream: ends cleanly after `fault_after` tokens, with no finish_reason and no
                  [DONE]; non-streamed: the JSON body cut in half
  malformed       stream: after `fault_after` tokens, an event that is not JSON; non-streamed:
                  a body that is not JSON
  not-chunk       stream: after `fault_after` tokens, an event that is JSON but not a chunk
                  (no "choices"); non-streamed: a JSON object without "choices"
  no-first-token  the answer finishes properly (finish_reason "stop", [DONE], usage with
                  completion_tokens 0) with no content at all
  error-event     stream: after `fault_after` tokens, `data: {"error": {...}}` then [DONE], as vLLM
                  does when generation fails; non-streamed: HTTP 500 with that error body

In-process, with pytest-aiohttp::

    server = await aiohttp_server(make_app(FakeLLM(ttft_s=0.02, itl_s=0.005)))

As a process (for `warmgate run -- ...`): prints `ready <port>` once it listens::

    python tests/support/fakellm.py --port 0 --ttft 0.02 --itl 0.005 --bucket 512:0.05:0.005:0.5
    python tests/support/fakellm.py --port 0 --behaviour stall --fault-after 3 --stall 30

`fake_llm_command(port, *options)` builds that argv. `--exit-report PATH` makes the process write
what it saw (Stats) and its own CPU seconds to PATH as JSON when SIGTERM stops it. Standard library
and aiohttp only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

SCRIPT = str(Path(__file__).resolve())
MODEL = "tiny"
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_GENERATION_PROMPT = 3
BEHAVIOURS = ("healthy", "stall", "truncate", "malformed", "not-chunk", "no-first-token", "error-event")
USAGE_MODES = ("requested", "always", "never")
ERROR_BODY = {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}


@dataclass(frozen=True)
class Bucket:
    """Timing of prompts up to `up_to` tokens."""

    up_to: int
    ttft_s: float
    itl_s: float
    cold_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Bucket:
        """TOKENS:TTFT_S:ITL_S[:COLD_S], e.g. 512:0.05:0.005:0.5"""
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"bucket {spec!r}: want TOKENS:TTFT_S:ITL_S[:COLD_S]")
        return cls(int(parts[0]), *(float(p) for p in parts[1:]))


@dataclass
class Stats:
    """What the server saw (GET /stats serves it)."""

    requests: int = 0
    # Generation requests per bucket (its `up_to`), and the prompts' texts and token counts.
    per_bucket: dict[int, int] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    tokenize_calls: int = 0
    streams_in_progress: int = 0
    max_streams_in_progress: int = 0
    tokens_sent: int = 0


@dataclass
class FakeLLM:
    model: str = MODEL
    served_models: list[str] | None = None  # default: [model]
    listed_models: list[str] | None = None  # default: served_models
    ttft_s: float = 0.0
    itl_s: float = 0.0
    cold_s: float = 0.0
    itl_load_s: float = 0.0
    buckets: list[Bucket] = field(default_factory=list)
    ready_after_s: float = 0.0
    usage: str = "requested"
    tokenize: bool = True
    max_model_len: int = 32768
    # Tokens per write() when itl is 0: a fast server's many tokens per network write.
    events_per_write: int = 1
    behaviour: str = "healthy"
    fault_from: int = 1
    fault_after: int = 2
    fault_min_prompt_tokens: int = 0
    stall_s: float = 3600.0
    stats: Stats = field(default_factory=Stats)
    started: float = field(default_factory=time.monotonic)
    warm_buckets: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour {self.behaviour!r}: one of {', '.join(BEHAVIOURS)}")
        if self.usage not in USAGE_MODES:
            raise ValueError(f"usage {self.usage!r}: one of {', '.join(USAGE_MODES)}")
        if self.served_models is None:
            self.served_models = [self.model]
        if self.listed_models is None:
            self.listed_models = list(self.served_models)
        self.buckets = sorted(self.buckets, key=lambda b: b.up_to)

    def bucket(self, prompt_tokens: int) -> Bucket:
        for bucket in self.buckets:
            if prompt_tokens <= bucket.up_to:
                return bucket
        if self.buckets:
            return self.buckets[-1]
        return Bucket(self.max_model_len, self.ttft_s, self.itl_s, self.cold_s)

    def faulty(self, request_number: int, prompt_tokens: int) -> bool:
        return (
            self.behaviour != "healthy"
            and request_number >= self.fault_from
            and prompt_tokens >= self.fault_min_prompt_tokens
        )


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_of(body: dict[str, Any], chat: bool) -> tuple[str, int]:
    """(prompt text as seen, prompt tokens as this server counts them)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        contents = [str(m.get("content", "")) for m in messages if isinstance(m, dict)]
        tokens = sum(count_tokens(c) + CHAT_TOKENS_PER_MESSAGE for c in contents)
        return "\n".join(contents), tokens + CHAT_TOKENS_GENERATION_PROMPT
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError("prompt must be a string")
    return prompt, count_tokens(prompt)


def openai_error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(body, status=status)


def make_app(fake: FakeLLM) -> web.Application:
    async def health(_request: web.Request) -> web.Response:
        if time.monotonic() - fake.started < fake.ready_after_s:
            return web.Response(status=503, text="loading")
        return web.Response(text="")

    async def models(_request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fakellm"} for m in fake.listed_models or []]
        return web.json_response({"object": "list", "data": data})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(asdict(fake.stats))

    async def tokenize(request: web.Request) -> web.Response:
        if not fake.tokenize:
            raise web.HTTPNotFound()
        body = await request.json()
        fake.stats.tokenize_calls += 1
        try:
            _, tokens = prompt_of(body, chat="messages" in body)
        except ValueError as exc:
            return openai_error(400, str(exc), "BadRequestError")
        return web.json_response(
            {"count": tokens, "max_model_len": fake.max_model_len, "tokens": list(range(tokens))}
        )

    async def completions(request: web.Request) -> web.StreamResponse:
        return await generate(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await generate(request, chat=True)

    async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
            text, prompt_tokens = prompt_of(body, chat)
            max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        except (ValueError, TypeError, AttributeError) as exc:
            return openai_error(400, f"invalid request: {exc}", "BadRequestError")
        if body.get("model") not in (fake.served_models or []):
            return openai_error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if prompt_tokens + max_tokens > fake.max_model_len:
            message = (
                f"This model's maximum context length is {fake.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion)."
            )
            return openai_error(400, message, "BadRequestError")
        fake.stats.requests += 1
        number = fake.stats.requests
        bucket = fake.bucket(prompt_tokens)
        fake.stats.per_bucket[bucket.up_to] = fake.stats.per_bucket.get(bucket.up_to, 0) + 1
        fake.stats.prompts.append(text)
        fake.stats.prompt_tokens.append(prompt_tokens)
        ttft = bucket.ttft_s
        if bucket.up_to not in fake.warm_buckets:
            fake.warm_buckets.add(bucket.up_to)
            ttft += bucket.cold_s
        fault = fake.behaviour if fake.faulty(number, prompt_tokens) else "healthy"
        answer = Answer(fake, chat, prompt_tokens, max_tokens, bucket, fault)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            wants_usage = fake.usage == "always" or (
                fake.usage == "requested" and isinstance(options, dict) and bool(options.get("include_usage"))
            )
            return await answer.stream(request, ttft, wants_usage)
        return await answer.whole(ttft)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app


@dataclass
class Answer:
    """One generation: its chunks and its timing."""

    fake: FakeLLM
    chat: bool
    prompt_tokens: int
    max_tokens: int
    bucket: Bucket
    fault: str
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish_reason}
            kind = "text_completion"
        return {"id": "fake-1", "object": kind, "created": self.created, "model": self.fake.model,
                "choices": [choice]}  # fmt: skip

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def itl(self) -> float:
        others = max(0, self.fake.stats.streams_in_progress - 1)
        return self.bucket.itl_s + others * self.fake.itl_load_s

    async def whole(self, ttft: float) -> web.StreamResponse:
        fault = self.fault
        if fault == "stall":
            await asyncio.sleep(self.fake.stall_s)
            return web.Response(status=504, text="stalled")
        tokens = 0 if fault == "no-first-token" else self.max_tokens
        await asyncio.sleep(ttft + max(0, tokens - 1) * self.itl())
        text = "".join(f" tok{i}" for i in range(tokens))
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice["finish_reason"] = "stop" if fault == "no-first-token" else "length"
        kind = "chat.completion" if self.chat else "text_completion"
        document = {"id": "fake-1", "object": kind, "created": self.created, "model": self.fake.model,
                    "choices": [choice], "usage": self.usage(tokens)}  # fmt: skip
        self.fake.stats.tokens_sent += tokens
        if fault == "error-event":
            return web.json_response(ERROR_BODY, status=500)
        if fault == "malformed":
            return web.Response(body=b"<html>502 Bad Gateway</html>", content_type="application/json")
        if fault == "not-chunk":
            return web.json_response({"object": "list", "data": []})
        raw = json.dumps(document).encode()
        if fault == "truncate":
            raw = raw[: len(raw) // 2]
        return web.Response(body=raw, content_type="application/json")

    async def stream(self, request: web.Request, ttft: float, wants_usage: bool) -> web.StreamResponse:
        stats = self.fake.stats
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        stats.streams_in_progress += 1
        stats.max_streams_in_progress = max(stats.max_streams_in_progress, stats.streams_in_progress)
        try:
            await self._stream(response, ttft, wants_usage)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away: nothing left to send to
        finally:
            stats.streams_in_progress -= 1
        return response

    async def _stream(self, response: web.StreamResponse, ttft: float, wants_usage: bool) -> None:
        async def send(*events: dict[str, Any] | str) -> None:
            payload = "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)
            await response.write(payload.encode())

        if self.chat:
            await send(self.chunk(None, role=True))
        await asyncio.sleep(ttft)
        fault = self.fault
        tokens = 0 if fault == "no-first-token" else self.max_tokens
        if fault in ("stall", "truncate", "malformed", "not-chunk", "error-event"):
            tokens = min(tokens, self.fake.fault_after)
        batch = max(1, self.fake.events_per_write)
        sent = 0
        while sent < tokens:
            if sent:
                itl = self.itl()
                if itl > 0:
                    await asyncio.sleep(itl)
            group = 1 if self.itl() > 0 else min(batch, tokens - sent)
            await send(*(self.chunk(f" tok{i}") for i in range(sent, sent + group)))
            sent += group
            self.fake.stats.tokens_sent += group
        if fault == "stall":
            await asyncio.sleep(self.fake.stall_s)
            return
        if fault == "truncate":
            return
        if fault == "malformed":
            await send('{"choices": [{"index": 0, "text": " tok')
            return
        if fault == "not-chunk":
            await send({"unexpected": True})
            return
        if fault == "error-event":
            await send(ERROR_BODY, "[DONE]")
            return
        finish = "stop" if fault == "no-first-token" else "length"
        await send(self.chunk(None if self.chat else "", finish_reason=finish))
        if wants_usage:
            tail = self.chunk(None)
            tail["choices"] = []
            tail["usage"] = self.usage(sent)
            await send(tail)
        await send("[DONE]")


def fake_llm_command(port: int = 0, *options: str) -> list[str]:
    """The argv of a fake LLM server process on `port` (0: any free port, printed on start)."""
    return [sys.executable, SCRIPT, "--port", str(port), *options]


def write_exit_report(fake: FakeLLM, path: Path) -> None:
    """What the server saw and the CPU it used, for a parent that cannot ask /stats any more
    (bench/llm_gate_effect.py subtracts this process's CPU from its parent's rusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {"stats": asdict(fake.stats), "cpu_s": usage.ru_utime + usage.ru_stime}
    path.write_text(json.dumps(report))


async def serve(fake: FakeLLM, host: str, port: int, exit_report: Path | None = None) -> None:
    # A short shutdown: a stalled stream must not hold up the exit on SIGTERM.
    runner = web.AppRunner(make_app(fake), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port nowhere else
    assert server is not None and server.sockets
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if exit_report is not None:
            write_exit_report(fake, exit_report)


def parse_args(argv: list[str]) -> tuple[FakeLLM, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="0: any free port (printed as 'ready <port>')")
    add("--host", default="127.0.0.1")
    add("--model", default=MODEL)
    add("--served-models", help="comma-separated (default: --model)")
    add("--listed-models", help="comma-separated, what /v1/models lists (default: the served ones)")
    add("--ttft", type=float, default=0.0, help="seconds to the first token")
    add("--itl", type=float, default=0.0, help="seconds between tokens")
    add("--cold", type=float, default=0.0, help="extra first-token seconds, first request per bucket")
    add("--itl-load", type=float, default=0.0, help="extra ITL seconds per other stream in progress")
    add("--bucket", action="append", default=[], metavar="TOKENS:TTFT:ITL[:COLD]", help="repeatable")
    add("--ready-after", type=float, default=0.0, help="/health answers 503 this long after start")
    add("--usage", choices=USAGE_MODES, default="requested", help="usage chunk in streams")
    add("--no-tokenize", action="store_true", help="no /tokenize endpoint (404)")
    add("--max-model-len", type=int, default=32768)
    add("--events-per-write", type=int, default=1, help="tokens per write when the ITL is 0")
    add("--behaviour", choices=BEHAVIOURS, default="healthy")
    add("--fault-from", type=int, default=1, help="first generation request (1-based) with the fault")
    add("--fault-after", type=int, default=2, help="content tokens before a mid-stream fault")
    add("--fault-min-prompt-tokens", type=int, default=0, help="only prompts at least this long")
    add("--stall", type=float, default=3600.0, help="seconds a stall lasts")
    add("--exit-report", type=Path, help="on SIGTERM, write {stats, cpu_s} here as JSON")
    args = parser.parse_args(argv)

    def names(value: str | None) -> list[str] | None:
        return [n for n in value.split(",") if n] if value is not None else None

    fake = FakeLLM(
        model=args.model,
        served_models=names(args.served_models),
        listed_models=names(args.listed_models),
        ttft_s=args.ttft,
        itl_s=args.itl,
        cold_s=args.cold,
        itl_load_s=args.itl_load,
        buckets=[Bucket.parse(spec) for spec in args.bucket],
        ready_after_s=args.ready_after,
        usage=args.usage,
        tokenize=not args.no_tokenize,
        max_model_len=args.max_model_len,
        events_per_write=args.events_per_write,
        behaviour=args.behaviour,
        fault_from=args.fault_from,
        fault_after=args.fault_after,
        fault_min_prompt_tokens=args.fault_min_prompt_tokens,
        stall_s=args.stall,
    )
    return fake, args


def main(argv: list[str]) -> int:
    fake, args = parse_args(argv)
    asyncio.run(serve(fake, args.host, args.port, args.exit_report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
