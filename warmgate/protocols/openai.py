"""OpenAI-compatible LLM servers: vLLM, TGI, SGLang, llama.cpp's server, `transformers serve`.

    POST /v1/completions       {"prompt": "...", "model", "max_tokens", "temperature": 0, "seed", "stream"}
    POST /v1/chat/completions  {"messages": [{"role": "user", "content": "..."}], ...the same}

Shapes are prompts (`shapes[].prompt`: a length in the server's tokens, max_tokens, streamed or
not, chat template or not), never tensors (prompting.py: the interface). The engine generates the
text and calibrates its length against the server's own count (`count_prompt_tokens`: the
family's tokenize endpoint, or `usage.prompt_tokens` of a one-token request); this module builds
the request once per shape, and `send` starts every request's prompt with words no other request
of the run had (prompting.py `UniqueStarts`), so prefix caching cannot turn the load test into
cache hits.

`send` reads a stream as it arrives (llmstream.py): the time to the first content token, the gaps
between tokens and the output tokens go on `Result.generation`, and a stream that stalls, ends
early, sends malformed or error events, or never sends a token is a failed request of its own kind.
A non-streamed answer's first token arrives with its last: its TTFT is its latency.

Greedy decoding (temperature 0 and a fixed seed), so the same prompt gets the same answer one
request at a time; under load the server batches requests and may compute them differently, so
the concurrency check is off for prompt shapes unless a shape turns `compare` on.

Ready: the family's health path (or `server.openai.health_path`, or `server.health_path`) answers
200 *and* `GET /v1/models` lists `server.model`; a server that lists other models only is named
with them (`unknown_model`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from warmgate.config import OpenAIOptions, PromptSpec, ServerConfig
from warmgate.protocols.answers import (
    MAX_ANSWER_BYTES,
    MAX_METADATA_BYTES,
    InvalidResponse,
    Outputs,
    OutputTensor,
    excerpt,
    loads_object,
    read_capped,
    show,
)
from warmgate.protocols.base import (
    CONNECTION,
    INVALID,
    TIMEOUT,
    Generation,
    PreparedRequest,
    Result,
    dumps,
)
from warmgate.protocols.health import describe_client_error, fetch
from warmgate.protocols.llmstream import (
    EVENT_STREAM,
    STREAM_TRUNCATED,
    Completion,
    StreamFault,
    read_answer,
    read_stream,
)
from warmgate.protocols.prompting import (
    SLOT,
    CountError,
    PromptAdapter,
    PromptCount,
    UniqueStarts,
    unique_words,
)
from warmgate.protocols.readiness import BodyCheck, Endpoint, listed_models, model_names

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
STREAM_HEADERS = {"Content-Type": "application/json", "Accept": EVENT_STREAM}
JSON_ONLY = {"Content-Type": "application/json"}
# Sampling off: the same prompt gets the same answer one request at a time.
SEED = 1234
# Stall limit when the config sets none: half the request timeout (so it can act before it), at
# most this long. Decoding steps take milliseconds; ten seconds of silence mid-answer is a stall.
DEFAULT_STALL_S = 10.0


@dataclass(frozen=True)
class Family:
    """What a server family serves besides the OpenAI API: its health path, and a tokenize
    endpoint (`tokenize_style` says which request it takes) where it has one."""

    health_path: str | None
    tokenize_path: str | None = None
    # vllm: {model, prompt} or {model, messages}, chat template applied; tgi: {inputs};
    # llamacpp: {content}. Only vllm's counts a chat prompt through its template.
    tokenize_style: str = "vllm"


FAMILIES: dict[str, Family] = {
    "vllm": Family("/health", "/tokenize", "vllm"),
    "tgi": Family("/health", "/tokenize", "tgi"),
    "sglang": Family("/health"),
    "llamacpp": Family("/health", "/tokenize", "llamacpp"),
    "transformers": Family("/health"),
    "generic": Family(None),
}


class OpenAIAdapter(PromptAdapter):
    name = "openai"
    server_options = frozenset({"openai"})

    def __init__(self, server: ServerConfig) -> None:
        super().__init__(server)
        self.options = server.openai or OpenAIOptions()
        self.family = FAMILIES[self.options.family]
        configured = self.options.stall_timeout_s
        self.stall_s = configured or min(DEFAULT_STALL_S, server.request_timeout_s / 2)
        self.unique_starts = UniqueStarts()
        # Why the tokenize endpoint is not used any more (it failed once), or "".
        self.tokenize_broken = ""

    @classmethod
    def check_server(cls, server: ServerConfig) -> None:
        super().check_server(server)
        if server.model_version is not None:
            raise ValueError(
                "model_version is not used by protocol openai (requests name server.model alone); remove it"
            )

    # ---- health --------------------------------------------------------------------------------

    def readiness_endpoints(self) -> list[Endpoint]:
        endpoints = []
        health = self.server.health_path or self.options.health_path or self.family.health_path
        if health is not None:
            endpoints.append(Endpoint(self.server.url + health))
        endpoints.append(Endpoint(self.server.url + MODELS_PATH, BodyCheck("lists-model", self.server.model)))
        return endpoints

    def default_liveness_endpoint(self) -> Endpoint:
        # Alive means answering; whether the model is listed is readiness's question.
        return Endpoint(self.readiness_endpoints()[0].url)

    async def unknown_model(self, session: aiohttp.ClientSession, timeout_s: float) -> str | None:
        answer = await fetch(session, "GET", self.server.url + MODELS_PATH, timeout_s)
        if isinstance(answer, str) or answer[0] != 200:
            return None
        models = listed_models(answer[1])
        if isinstance(models, str) or not models or self.server.model in models:
            return None  # not an answer, still loading, or served
        return (
            f"the server does not serve model {self.server.model!r} (server.model): GET "
            f"{self.server.url}{MODELS_PATH} lists {model_names(models)}"
        )

    # ---- requests ------------------------------------------------------------------------------

    def build_prompt(self, prompt: PromptSpec, text: str, *, variant: int | None = None) -> PreparedRequest:
        start = SLOT if variant is None else unique_words(variant)
        # The prompt goes first, so the slot is the first NUL escape of the body.
        document: dict[str, Any]
        if prompt.chat:
            document = {"messages": [{"role": "user", "content": start + text}]}
        else:
            document = {"prompt": start + text}
        document.update(
            model=self.server.model,
            max_tokens=prompt.max_tokens,
            temperature=0,
            seed=SEED,
            stream=prompt.stream,
        )
        if prompt.stream:
            # vLLM and most others send usage (the server's output token count) only when asked.
            document["stream_options"] = {"include_usage": True}
        path = CHAT_PATH if prompt.chat else COMPLETIONS_PATH
        headers = STREAM_HEADERS if prompt.stream else JSON_ONLY
        return PreparedRequest("POST", self.server.url + path, dumps(document), headers, batch_size=1)

    def parse(self, body: bytes) -> Outputs:
        document = loads_object(body)
        completion = Completion(0.0)
        try:
            read_answer(completion, document)
        except StreamFault as fault:
            raise InvalidResponse(fault.message) from None
        text = "".join(completion.texts)
        return {"text": OutputTensor(name="text", data=[text], shape=(1,), datatype="BYTES")}

    # ---- sending -------------------------------------------------------------------------------

    async def send(
        self,
        session: aiohttp.ClientSession,
        request: PreparedRequest,
        timeout: aiohttp.ClientTimeout,
        clock: Callable[[], float] = time.monotonic,
    ) -> Result:
        """One completion, read as it arrives; never raises for a server-side failure."""
        body = self.unique_starts.fill(request.body) if request.body is not None else None
        streamed = request.headers.get("Accept") == EVENT_STREAM
        start = clock()
        completion = Completion(start)
        status: int | None = None
        try:
            async with session.request(
                request.method, request.url, data=body, headers=request.headers, timeout=timeout
            ) as response:
                status = response.status
                if not 200 <= status < 300:
                    answer = await read_capped(response, MAX_ANSWER_BYTES)
                    shown = excerpt(answer) or "(empty body)"
                    message = f"HTTP {status} from {request.describe()}: {shown}"
                    return Result(clock() - start, f"http_{status}", status, answer, message, request)
                if streamed:
                    await read_stream(response, completion, clock, self.stall_s)
                    answer = dumps(completion.answer())
                else:
                    answer = await read_capped(response, MAX_ANSWER_BYTES)
                    read_answer(completion, loads_object(answer))
                    completion.first_at = clock()
        except StreamFault as fault:
            kind, message = fault.kind, fault.message
        except TimeoutError:
            kind, message = TIMEOUT, _timeout_reason(timeout, status, completion)
        except aiohttp.ClientPayloadError:
            kind, message = STREAM_TRUNCATED, f"the connection dropped after {completion.events} tokens"
        except aiohttp.ClientError as exc:
            kind, message = CONNECTION, describe_client_error(exc)
        except InvalidResponse as exc:  # over the size cap, or not JSON
            kind, message = INVALID, str(exc)
        else:
            latency = clock() - start
            generation = Generation(
                ttft_s=completion.ttft_s if streamed and completion.ttft_s is not None else latency,
                gaps_s=completion.gaps if streamed else (),
                output_tokens=completion.output_tokens if streamed else completion.completion_tokens,
                prompt_tokens=completion.prompt_tokens,
            )
            return Result(latency, "", status, answer, request=request, generation=generation)
        where = (
            f"{request.describe()}: {message}"
            if kind == CONNECTION
            else f"{message} from {request.describe()}"
        )
        return Result(clock() - start, kind, status, message=where, request=request)

    # ---- counting a prompt's tokens ------------------------------------------------------------

    def tokenize_path(self, prompt: PromptSpec) -> str | None:
        """The tokenize endpoint meant to count this prompt, or None (count from usage)."""
        mode = self.options.tokenize
        if mode == "none":
            return None
        if mode != "auto":
            return mode
        family = self.family
        if family.tokenize_path is None or (prompt.chat and family.tokenize_style != "vllm"):
            return None  # only vLLM's endpoint applies the chat template
        return family.tokenize_path

    async def count_prompt_tokens(
        self, session: aiohttp.ClientSession, prompt: PromptSpec, text: str, timeout_s: float
    ) -> PromptCount:
        path = self.tokenize_path(prompt)
        if path is not None and not self.tokenize_broken:
            counted = await self._tokenize(session, path, prompt, text, timeout_s)
            if isinstance(counted, int):
                return PromptCount(counted, "tokenize")
            # Not a tokenize endpoint after all (404, an unknown answer): usage from now on.
            self.tokenize_broken = counted
        count = await self._count_from_usage(session, prompt, text, timeout_s)
        if path is not None:
            return PromptCount(count.tokens, count.counted_by, f"tokenize unusable: {self.tokenize_broken}")
        return count

    async def _tokenize(
        self, session: aiohttp.ClientSession, path: str, prompt: PromptSpec, text: str, timeout_s: float
    ) -> int | str:
        full = self.unique_starts.next() + text
        style = self.family.tokenize_style if self.options.tokenize == "auto" else "vllm"
        document: dict[str, Any]
        if style == "tgi":
            document = {"inputs": full}
        elif style == "llamacpp":
            document = {"content": full, "add_special": True}
        elif prompt.chat:
            document = {"model": self.server.model, "messages": [{"role": "user", "content": full}]}
        else:
            document = {"model": self.server.model, "prompt": full}
        url = self.server.url + path
        try:
            async with session.post(
                url, data=dumps(document), headers=JSON_ONLY, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                answer = await read_capped(response, MAX_METADATA_BYTES)
                if response.status != 200:
                    return f"POST {url}: HTTP {response.status} {excerpt(answer)}".rstrip()
                return token_count(loads_object(answer))
        except TimeoutError:
            return f"POST {url}: no answer within {timeout_s:g}s"
        except aiohttp.ClientError as exc:
            return f"POST {url}: {describe_client_error(exc)}"
        except (InvalidResponse, ValueError) as exc:
            return f"POST {url}: {exc}"

    async def _count_from_usage(
        self, session: aiohttp.ClientSession, prompt: PromptSpec, text: str, timeout_s: float
    ) -> PromptCount:
        one_token = prompt.model_copy(update={"max_tokens": 1, "stream": False})
        result = await self.send(
            session, self.build_prompt(one_token, text), aiohttp.ClientTimeout(total=timeout_s)
        )
        if not result.ok:
            raise CountError(result.message)
        counted = result.generation.prompt_tokens if result.generation is not None else None
        if counted is None:
            why = f"; {self.tokenize_broken}" if self.tokenize_broken else ""
            raise CountError(f"the answer has no usage.prompt_tokens and no tokenize endpoint is used{why}")
        return PromptCount(counted, "usage")


# ---- helpers -----------------------------------------------------------------------------------


def _timeout_reason(timeout: aiohttp.ClientTimeout, status: int | None, completion: Completion) -> str:
    limit = f"{timeout.total:g}s (server.request_timeout_s)"
    if status is None:
        return f"no response within {limit}"
    if completion.first_at is None:
        return f"no first token within {limit}"
    return f"the answer was still streaming after {limit}, {completion.events} tokens in"


def token_count(document: Any) -> int:
    """A tokenize answer's count: vLLM's {count, tokens}, llama.cpp's {tokens}, TGI's list."""
    if isinstance(document, dict):
        count = document.get("count")
        if type(count) is int and count >= 0:
            return count
        document = document.get("tokens")
    if isinstance(document, list):
        return len(document)
    raise ValueError(f"tokenize answer has no count or tokens: {show(document)}")
