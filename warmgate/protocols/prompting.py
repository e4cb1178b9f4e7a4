"""What a protocol whose shapes are prompts (an LLM server) offers the engine, and how every
request's prompt is made unique.

`PromptAdapter` is the interface (openai.py implements it): build a prompt shape's request once
(`build_prompt`), and say how many tokens the server counts for a text (`count_prompt_tokens`),
which the engine's prompt stage (entrypoint/engine/prompts.py) calibrates lengths with.

Unique prompts: a prepared body holds `SLOT` where the prompt begins, and `UniqueStarts.fill`
puts the next request's own words there as it is sent, a cheap bytes replacement, so the body is
still built once per shape. The words spell a counter that starts at a random point (so two pods
differ too) in common English words that are one token each in the usual tokenizers: every
prompt of a run differs from its first token, and prefix caching cannot serve any of it.
"""

from __future__ import annotations

import itertools
import secrets
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from warmgate.config import PromptSpec
from warmgate.protocols.base import Adapter, EncodeError, PreparedRequest

if TYPE_CHECKING:
    from warmgate.tensors import Tensor

# The prompt's first characters in a prepared body: a NUL, which JSON writes as this escape and
# generated text never holds.
SLOT = "\0"
SLOT_JSON = b"\\u0000"
# A request's own start: a number in base len(UNIQUE_WORDS), UNIQUE_DIGITS words long, then a
# full stop (about six tokens in any tokenizer, counted by the calibration like the rest).
_UNIQUE_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more "
    "can out up about into them than only other time new some could these two may first then do"
)
UNIQUE_WORDS = tuple(_UNIQUE_TEXT.split())
UNIQUE_DIGITS = 5


def unique_words(number: int) -> str:
    """`number` spelt in UNIQUE_DIGITS words (lowest digit first, so consecutive numbers differ
    in the first word), then a full stop."""
    base = len(UNIQUE_WORDS)
    words = []
    for _ in range(UNIQUE_DIGITS):
        number, digit = divmod(number, base)
        words.append(UNIQUE_WORDS[digit])
    return " ".join(words) + ". "


class UniqueStarts:
    """Every request's own first words: unique within a run (until 65**5, about a billion,
    requests) and, from a random starting point, most likely across pods."""

    def __init__(self) -> None:
        self._numbers = itertools.count(secrets.randbelow(len(UNIQUE_WORDS) ** UNIQUE_DIGITS))

    def next(self) -> str:
        return unique_words(next(self._numbers))

    def fill(self, body: bytes) -> bytes:
        """`body` with its slot (if it has one) holding the next request's words."""
        return body.replace(SLOT_JSON, self.next().encode(), 1)


class CountError(Exception):
    """The server cannot count a prompt's tokens (no usage, no usable tokenize endpoint)."""


@dataclass(frozen=True)
class PromptCount:
    tokens: int
    # "tokenize" (the server's tokenize endpoint) or "usage" (usage.prompt_tokens).
    counted_by: str
    # Why the count came from usage although a tokenize endpoint was to be used, or "".
    note: str = ""


class PromptAdapter(Adapter):
    """A protocol whose shapes are prompts: what the engine's prompt stage asks of it."""

    @classmethod
    def takes_prompts(cls) -> bool:
        return True

    def build(self, tensors: Sequence[Tensor], batch_size: int) -> PreparedRequest:
        raise EncodeError(f"protocol {self.name} takes prompt shapes, not tensor inputs")

    @abstractmethod
    def build_prompt(self, prompt: PromptSpec, text: str, *, variant: int | None = None) -> PreparedRequest:
        """The request for `text`, built once per shape. Without `variant` the prompt starts with
        `SLOT`, so every request sent gets its own start; with it, the start is `unique_words
        (variant)`, the same each time (the concurrency check's golden answers)."""

    @abstractmethod
    async def count_prompt_tokens(
        self, session: aiohttp.ClientSession, prompt: PromptSpec, text: str, timeout_s: float
    ) -> PromptCount:
        """How many tokens the server counts for `text` sent as `prompt` (a unique start
        included, chat template applied for chat shapes); CountError when it cannot say."""
