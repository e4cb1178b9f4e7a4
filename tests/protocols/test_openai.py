"""protocol openai: config rules, requests, unique prompts, readiness and counting prompt tokens.

The stream reading and its failure kinds are in test_openai_stream.py. Servers here are the fake
OpenAI-compatible server (tests/support/fakellm.py) in-process, or small aiohttp apps where a test
needs an answer the fake does not give.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.fakellm import CHAT_TOKENS_GENERATION_PROMPT, CHAT_TOKENS_PER_MESSAGE, FakeLLM, make_app
from warmgate.config import ConfigError, PromptSpec, validate_config
from warmgate.protocols import adapters, make_adapter
from warmgate.protocols.openai import SEED, OpenAIAdapter
from warmgate.protocols.prompting import SLOT_JSON, UNIQUE_DIGITS, CountError, unique_words

Start = Callable[[web.Application], Awaitable[TestServer]]
TIMEOUT = aiohttp.ClientTimeout(total=5)


def openai_config(url: str = "http://127.0.0.1:9", *, shapes: Any = None, **server: Any) -> Any:
    raw = {
        "server": {"url": url, "protocol": "openai", "model": "tiny", "request_timeout_s": 5, **server},
        "shapes": shapes if shapes is not None else [{"name": "p", "prompt": {"tokens": 16}}],
    }
    return validate_config(raw, "w.yaml", {}, protocols=adapters())


def adapter_for(url: str, **server: Any) -> OpenAIAdapter:
    adapter = make_adapter(openai_config(url, **server).server)
    assert isinstance(adapter, OpenAIAdapter)
    return adapter


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        validate_config(raw, "w.yaml", {}, protocols=adapters())
    return str(raised.value)


@pytest.fixture
async def start(aiohttp_server: Any) -> Start:
    async def run(app: web.Application) -> TestServer:
        server: TestServer = await aiohttp_server(app)
        return server

    return run


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client:
        yield client


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


# ---- config rules ------------------------------------------------------------------------------


def test_a_prompt_shape_loads_with_its_defaults_and_compare_off() -> None:
    config = openai_config(openai={"family": "vllm"})
    [shape] = config.shapes
    assert shape.prompt == PromptSpec(tokens=16, max_tokens=16, stream=True, chat=True)
    assert shape.inputs is None and shape.batch_size == 1
    # Batching may change an LLM's greedy answer: the concurrency check is opt-in for prompts.
    assert shape.compare is False
    assert config.server.openai is not None and config.server.openai.family == "vllm"
    # The effective config (`warmgate check`) loads back as the same config.
    again = validate_config(config.model_dump(mode="json"), "again", {}, protocols=adapters())
    assert again == config


def test_compare_can_be_turned_on_for_a_prompt_shape() -> None:
    config = openai_config(shapes=[{"name": "p", "prompt": {"tokens": 8}, "compare": True}])
    assert config.shapes[0].compare is True


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"server": {"protocol": "openai"}, "shapes": [{"name": "t", "inputs": {"x": {"dims": [1]}}}]},
            "w.yaml: shapes[0].inputs: protocol openai takes prompt shapes (`prompt: {tokens: N}`), "
            "not tensor inputs",
        ),
        (
            {"shapes": [{"name": "p", "prompt": {"tokens": 8}}]},
            "w.yaml: shapes[0].prompt: a prompt shape needs server.protocol openai, got oip",
        ),
        (
            {"server": {"protocol": "openai"}, "shapes": [{"name": "p"}]},
            "w.yaml: shapes[0]: needs exactly one of inputs (tensors) or prompt (an LLM prompt), got neither",
        ),
        (
            {
                "server": {"protocol": "openai"},
                "shapes": [{"name": "p", "prompt": {"tokens": 8}, "inputs": {"x": {"dims": [1]}}}],
            },
            "w.yaml: shapes[0]: needs exactly one of inputs (tensors) or prompt (an LLM prompt), got both",
        ),
        (
            {
                "server": {"protocol": "openai"},
                "shapes": [{"name": "p", "prompt": {"tokens": 8}, "batch_size": 4}],
            },
            "w.yaml: shapes[0].batch_size: a prompt shape sends one prompt per request (1), got 4",
        ),
        (
            {"server": {"protocol": "openai"}, "shapes": [{"name": "p", "prompt": {"tokens": 0}}]},
            "w.yaml: shapes[0].prompt.tokens: must be > 0, got 0",
        ),
        (
            {"server": {"protocol": "openai", "openai": {"tokenize": "yes"}}},
            "w.yaml: server.openai.tokenize: must be auto, none or a path starting with /, got 'yes'",
        ),
        (
            {"server": {"protocol": "openai", "openai": {"family": "ollama"}}},
            "w.yaml: server.openai.family: must be one of 'vllm', 'tgi', 'sglang', 'llamacpp', "
            "'transformers' or 'generic', got 'ollama'",
        ),
        (
            {"server": {"openai": {"family": "vllm"}}},
            "w.yaml: server: openai is not used by protocol oip; remove it",
        ),
        (
            {"server": {"protocol": "openai", "model_version": "2"}},
            "w.yaml: server: model_version is not used by protocol openai",
        ),
        (
            {"server": {"protocol": "openai"}, "shapes": "auto"},
            "w.yaml: shapes: auto needs server.protocol oip",
        ),
        (
            {
                "server": {"protocol": "openai"},
                "shapes": [{"name": "p", "prompt": {"tokens": 8, "stream": False}}],
                "gate": {"itl_p95_ms": 50},
            },
            "w.yaml: gate.itl_p95_ms: is judged on streamed prompt shapes (shapes[].prompt with stream: "
            "true), and no shape is one",
        ),
    ],
)
def test_config_mistakes_are_one_line_naming_the_path(raw: dict[str, Any], message: str) -> None:
    assert refused(raw).startswith(message)


# ---- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_request_bodies(chat: bool, stream: bool) -> None:
    adapter = adapter_for("http://127.0.0.1:9")
    request = adapter.build_prompt(PromptSpec(tokens=8, max_tokens=7, stream=stream, chat=chat), "some words")
    assert request.method == "POST" and request.body is not None and request.batch_size == 1
    body = json.loads(request.body)
    assert request.url == "http://127.0.0.1:9" + ("/v1/chat/completions" if chat else "/v1/completions")
    prompt = body["messages"][0]["content"] if chat else body["prompt"]
    if chat:
        assert body["messages"] == [{"role": "user", "content": prompt}]
    # Greedy and seeded; the prompt opens with the slot each request fills.
    assert prompt == "\0some words" and request.body.count(SLOT_JSON) == 1
    assert body["model"] == "tiny" and body["max_tokens"] == 7
    assert body["temperature"] == 0 and body["seed"] == SEED and body["stream"] is stream
    if stream:
        assert body["stream_options"] == {"include_usage": True}
        assert request.headers["Accept"] == "text/event-stream"
    else:
        assert "stream_options" not in body and "Accept" not in request.headers


def test_a_check_variant_has_a_fixed_start() -> None:
    adapter = adapter_for("http://127.0.0.1:9")
    spec = PromptSpec(tokens=8, chat=False)
    first, again, other = (adapter.build_prompt(spec, "words", variant=v) for v in (2, 2, 3))
    assert first.body == again.body != other.body
    assert first.body is not None and SLOT_JSON not in first.body
    assert json.loads(first.body)["prompt"] == unique_words(2) + "words"


def test_tensor_shapes_are_refused_by_build() -> None:
    from warmgate.protocols import EncodeError

    with pytest.raises(EncodeError, match="takes prompt shapes"):
        adapter_for("http://127.0.0.1:9").build([], 1)


def test_unique_words_spell_distinct_numbers() -> None:
    starts = [unique_words(n) for n in range(5000)]
    assert len(set(starts)) == 5000
    assert all(len(start.split()) == UNIQUE_DIGITS and start.endswith(". ") for start in starts)
    # Consecutive requests differ from their very first word (prefix caches hash from the start).
    assert all(a.split()[0] != b.split()[0] for a, b in itertools.pairwise(starts))


async def test_every_request_sent_has_a_prompt_no_other_had(start: Start, session: Any) -> None:
    fake = FakeLLM()
    adapter = adapter_for(url_of(await start(make_app(fake))))
    for chat in (True, False):
        request = adapter.build_prompt(PromptSpec(tokens=8, max_tokens=2, chat=chat), "the same filler")
        for _ in range(20):
            assert (await adapter.send(session, request, TIMEOUT)).ok
    assert len(fake.stats.prompts) == 40 and len(set(fake.stats.prompts)) == 40
    assert len({prompt.split()[0] for prompt in fake.stats.prompts[:20]}) > 1
    assert all(prompt.endswith(". the same filler") for prompt in fake.stats.prompts)
    # Another adapter (another pod) starts its count somewhere else.
    other = adapter_for(url_of(await start(make_app(fake))))
    assert other.unique_starts.next() != adapter.unique_starts.next()


# ---- readiness ---------------------------------------------------------------------------------


async def test_ready_needs_the_family_health_path_and_the_model_listed(start: Start, session: Any) -> None:
    fake = FakeLLM(ready_after_s=60)
    url = url_of(await start(make_app(fake)))
    adapter = adapter_for(url, openai={"family": "vllm"})
    assert [e.url for e in adapter.readiness_endpoints()] == [url + "/health", url + "/v1/models"]
    assert adapter.health_url == url + "/health"
    reason = await adapter.check_ready(session, 1)
    assert reason is not None and reason.startswith(f"GET {url}/health: HTTP 503")
    fake.ready_after_s = 0
    assert await adapter.check_ready(session, 1) is None
    assert await adapter.check_live(session, 1) is None

    fake.listed_models = ["other", "more"]
    reason = await adapter.check_ready(session, 1)
    assert reason == (
        f"GET {url}/v1/models: does not list model 'tiny' (server.model); it lists 'other', 'more'"
    )
    # Alive is answering, whatever the model list says.
    assert await adapter.check_live(session, 1) is None
    assert await adapter.unknown_model(session, 1) == (
        f"the server does not serve model 'tiny' (server.model): GET {url}/v1/models lists 'other', 'more'"
    )
    fake.listed_models = []
    assert await adapter.unknown_model(session, 1) is None, "an empty list may mean still loading"


async def test_generic_family_asks_the_model_list_alone_and_health_path_overrides(start: Start) -> None:
    url = "http://127.0.0.1:9"
    assert [e.url for e in adapter_for(url).readiness_endpoints()] == [url + "/v1/models"]
    assert adapter_for(url).liveness_endpoint().url == url + "/v1/models"
    custom = adapter_for(url, openai={"family": "tgi", "health_path": "/ready"})
    assert [e.url for e in custom.readiness_endpoints()] == [url + "/ready", url + "/v1/models"]
    server_wide = adapter_for(url, health_path="/ping", openai={"family": "tgi", "health_path": "/ready"})
    assert [e.url for e in server_wide.readiness_endpoints()] == [url + "/ping", url + "/v1/models"]


async def test_a_model_list_that_is_not_one_is_not_ready(start: Start, session: Any) -> None:
    async def models(_request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    url = url_of(await start(app))
    reason = await adapter_for(url).check_ready(session, 1)
    assert reason is not None and reason.startswith(
        f"GET {url}/v1/models: model list unusable: response is not JSON"
    )


# ---- counting prompt tokens ----------------------------------------------------------------------


async def test_vllm_counts_through_tokenize_with_the_chat_template(start: Start, session: Any) -> None:
    fake = FakeLLM()
    adapter = adapter_for(url_of(await start(make_app(fake))), openai={"family": "vllm"})
    words = "one two three four"
    chat = await adapter.count_prompt_tokens(session, PromptSpec(tokens=8), words, 5)
    plain = await adapter.count_prompt_tokens(session, PromptSpec(tokens=8, chat=False), words, 5)
    # The fake counts words; the unique start is UNIQUE_DIGITS of them.
    assert plain.tokens == 4 + UNIQUE_DIGITS and plain.counted_by == "tokenize" and not plain.note
    assert chat.tokens == plain.tokens + CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_GENERATION_PROMPT
    assert fake.stats.tokenize_calls == 2 and fake.stats.requests == 0, "no generation to count"


async def test_without_tokenize_the_usage_of_a_one_token_request_counts(start: Start, session: Any) -> None:
    fake = FakeLLM()
    adapter = adapter_for(url_of(await start(make_app(fake))), openai={"family": "transformers"})
    counted = await adapter.count_prompt_tokens(session, PromptSpec(tokens=8), "one two three", 5)
    assert counted.counted_by == "usage" and fake.stats.tokenize_calls == 0
    assert counted.tokens == 3 + UNIQUE_DIGITS + CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_GENERATION_PROMPT
    assert fake.stats.requests == 1 and fake.stats.tokens_sent == 1


async def test_a_missing_tokenize_endpoint_falls_back_to_usage_and_says_so(
    start: Start, session: Any
) -> None:
    fake = FakeLLM(tokenize=False)
    url = url_of(await start(make_app(fake)))
    adapter = adapter_for(url, openai={"family": "vllm"})
    counted = await adapter.count_prompt_tokens(session, PromptSpec(tokens=8, chat=False), "a b", 5)
    assert (counted.tokens, counted.counted_by) == (2 + UNIQUE_DIGITS, "usage")
    assert counted.note.startswith(f"tokenize unusable: POST {url}/tokenize: HTTP 404")
    # Asked once: later counts go straight to usage.
    await adapter.count_prompt_tokens(session, PromptSpec(tokens=8, chat=False), "a b", 5)
    assert fake.stats.requests == 2


async def test_no_usage_and_no_tokenize_is_a_count_error(start: Start, session: Any) -> None:
    async def complete(_request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "text": " hi", "finish_reason": "length"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    adapter = adapter_for(url_of(await start(app)))
    with pytest.raises(CountError, match=r"no usage\.prompt_tokens"):
        await adapter.count_prompt_tokens(session, PromptSpec(tokens=8, chat=False), "a b", 5)


@pytest.mark.parametrize(
    ("family", "answer", "expected_body"),
    [
        ("tgi", [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}, {"id": 3, "text": "c"}], "inputs"),
        ("llamacpp", {"tokens": [1, 2, 3]}, "content"),
    ],
)
async def test_tgi_and_llamacpp_tokenize_requests(
    start: Start, session: Any, family: str, answer: Any, expected_body: str
) -> None:
    seen: list[dict[str, Any]] = []

    async def tokenize(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(answer)

    app = web.Application()
    app.router.add_post("/tokenize", tokenize)
    adapter = adapter_for(url_of(await start(app)), openai={"family": family})
    counted = await adapter.count_prompt_tokens(session, PromptSpec(tokens=8, chat=False), "x y", 5)
    assert (counted.tokens, counted.counted_by) == (3, "tokenize")
    assert seen[0][expected_body].endswith(". x y")
    # Their tokenize endpoints do not apply a chat template: chat prompts are counted from usage.
    assert adapter.tokenize_path(PromptSpec(tokens=8, chat=True)) is None


# ---- answers -----------------------------------------------------------------------------------


def test_parse_reads_the_text_of_either_endpoint() -> None:
    adapter = adapter_for("http://127.0.0.1:9")
    chat = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    }
    plain = {"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}]}
    for document in (chat, plain):
        outputs = adapter.decode(json.dumps(document).encode())
        assert outputs["text"].data == ["hi"] and outputs["text"].datatype == "BYTES"
    from warmgate.protocols import InvalidResponse

    with pytest.raises(InvalidResponse, match="has no generated text"):
        adapter.decode(b'{"choices": [{"index": 0, "text": ""}]}')
    with pytest.raises(InvalidResponse, match="not JSON"):
        adapter.decode(b"<html>")
