"""Prompt shapes (LLM servers): prompts of a target length in the server's own tokens, without a
tokenizer in warmgate.

Planning (before the server is up) builds each prompt shape's request from an estimate: filler
words from the payload vocabulary (common English words, one token each in the usual tokenizers),
one word per target token. Calibration (once the server is ready, at the start of the warm stage)
asks the server to count that prompt, through the adapter's tokenize endpoint or the
`usage.prompt_tokens` of a one-token request, chat template included for chat shapes, and adjusts
the number of words until the count is within tolerance of the target (`TOLERANCE_TOKENS` or
`TOLERANCE_FRACTION`, whichever is wider), for at most `MAX_ROUNDS` counts. The report records
target and achieved lengths and how they were counted.

The filler is the same for every request of a shape; the protocol adapter starts every request
with words of its own (see protocols/openai.py), which the counts include, so no two requests of
a run share a prefix and prefix caching cannot make the load test measure cache hits.
"""

from __future__ import annotations

import math
import random
import zlib

from warmgate.config import Config, PromptSpec, Shape
from warmgate.entrypoint.engine.context import StageContext, log
from warmgate.entrypoint.engine.evidence import PayloadInvalid, PayloadTooLarge, ShapeRun
from warmgate.entrypoint.engine.payloads import WORDS
from warmgate.protocols import Adapter, EncodeError, PreparedRequest
from warmgate.protocols.prompting import CountError, PromptAdapter
from warmgate.state import Phase, PromptReport, ShapeReport

# Close enough: a few tokens either way (the unique start alone varies by a token or two).
TOLERANCE_TOKENS = 4
TOLERANCE_FRACTION = 0.02
# Counts per shape. Words map to tokens almost linearly, so two or three usually suffice.
MAX_ROUNDS = 6
# Serialised bytes per prompt token, for the payload budget before anything is built: a word
# and its space, the JSON around it, with room for long words and escapes.
BYTES_PER_TOKEN_ESTIMATE = 8
BODY_OVERHEAD_BYTES = 512


def estimated_prompt_bytes(prompt: PromptSpec) -> int:
    return prompt.tokens * BYTES_PER_TOKEN_ESTIMATE + BODY_OVERHEAD_BYTES


def filler(shape_name: str, words: int) -> str:
    """`words` filler words, the same for a shape on every run and in every pod."""
    rng = random.Random(zlib.crc32(shape_name.encode()))
    return " ".join(rng.choices(WORDS, k=max(1, words)))


def plan_prompt(config: Config, adapter: Adapter, shape: Shape, budget: int) -> ShapeRun:
    """A prompt shape's run, with its request built from the estimate (calibrated later)."""
    prompt = shape.prompt
    assert prompt is not None  # the caller plans tensor shapes itself
    if not isinstance(adapter, PromptAdapter):
        raise PayloadInvalid(shape.name, f"shape {shape.name}: protocol {adapter.name} cannot send a prompt")
    report = ShapeReport(
        name=shape.name,
        batch_size=1,
        prompt=PromptReport(
            target_tokens=prompt.tokens,
            max_tokens=prompt.max_tokens,
            stream=prompt.stream,
            chat=prompt.chat,
            note="not calibrated: the server never counted the prompt",
        ),
    )
    run = ShapeRun(shape=shape, request=PreparedRequest("POST", "", None), report=report)
    set_prompt(config, adapter, run, prompt.tokens, budget)
    return run


def set_prompt(config: Config, adapter: PromptAdapter, run: ShapeRun, words: int, budget: int) -> None:
    """Build the shape's requests (and its concurrency-check variants) for `words` filler words."""
    shape, prompt = run.shape, run.shape.prompt
    assert prompt is not None
    text = filler(shape.name, words)
    run.request = _build(adapter, shape, prompt, text)
    if run.request.size > budget:
        raise PayloadTooLarge(shape.name, run.request.size, budget, "serialised")
    run.report.payload_bytes = run.request.size
    if run.check is not None:
        # Fixed starts, one per variant: the same prompt each time, so answers can be compared.
        variants = max(1, min(config.concurrency_check.variants, budget // max(1, run.request.size)))
        run.check_requests = [_build(adapter, shape, prompt, text, variant) for variant in range(variants)]


def _build(
    adapter: PromptAdapter, shape: Shape, prompt: PromptSpec, text: str, variant: int | None = None
) -> PreparedRequest:
    try:
        return adapter.build_prompt(prompt, text, variant=variant)
    except EncodeError as exc:
        raise PayloadInvalid(shape.name, f"shape {shape.name}: {exc}") from None


async def calibrate(ctx: StageContext, runs: list[ShapeRun]) -> None:
    """Every prompt shape's length, against the server's own count (see the module's doc)."""
    prompts = [run for run in runs if run.shape.prompt is not None]
    adapter = ctx.adapter
    if not prompts or not isinstance(adapter, PromptAdapter):
        return
    ctx.state.set_phase(Phase.WARMING, f"calibrating {len(prompts)} prompt lengths")
    started = ctx.clock()
    try:
        for position, run in enumerate(prompts, start=1):
            ctx.progress.update(position - 1, len(prompts), f"calibrating prompt of shape {run.shape.name}")
            await _calibrate(ctx, adapter, run)
    finally:
        ctx.add_phase(Phase.WARMING.value, ctx.clock() - started)


def tolerance(target: int) -> int:
    return max(TOLERANCE_TOKENS, math.ceil(TOLERANCE_FRACTION * target))


async def _calibrate(ctx: StageContext, adapter: PromptAdapter, run: ShapeRun) -> None:
    prompt = run.shape.prompt
    report = run.report.prompt
    assert prompt is not None and report is not None
    target, allowed = prompt.tokens, tolerance(prompt.tokens)
    counts: dict[int, int] = {}  # words -> tokens the server counted
    counted_by = counted_note = ""
    words = target
    for _ in range(MAX_ROUNDS):
        try:
            counted = await adapter.count_prompt_tokens(
                ctx.session, prompt, filler(run.shape.name, words), ctx.config.server.request_timeout_s
            )
        except CountError as exc:
            await ctx.wait_if_server_gone()
            report.note = f"not calibrated: {exc}"
            log.warning(
                "shape %s: prompt length %s; sending about %d words", run.shape.name, report.note, words
            )
            break
        finally:
            report.calibration_requests += 1
        counts[words], counted_by, counted_note = counted.tokens, counted.counted_by, counted.note
        if abs(counted.tokens - target) <= allowed:
            break
        words = next_words(counts, target)
        if words in counts:
            break
    if counts:
        words = min(counts, key=lambda w: (abs(counts[w] - target), w))
        report.achieved_tokens, report.counted_by = counts[words], counted_by
        report.note = (
            ""
            if abs(counts[words] - target) <= allowed
            else (
                f"{counts[words]} tokens is the closest the server's count came to {target} in "
                f"{len(counts)} tries"
            )
        )
        report.note = "; ".join(note for note in (report.note, counted_note) if note)
    set_prompt(ctx.config, adapter, run, words, ctx.config.warmup.max_payload_bytes)
    log.info(
        "shape %s: prompt of %s tokens (target %d, counted by %s) from %d words",
        run.shape.name,
        report.achieved_tokens if report.achieved_tokens is not None else "?",
        target,
        report.counted_by or "nobody",
        words,
    )


def next_words(counts: dict[int, int], target: int) -> int:
    """The next number of words to try: along the line through the two counts nearest the
    target (a secant step), or scaled by the tokens per word seen when there is one count."""
    nearest = sorted(counts, key=lambda w: abs(counts[w] - target))[:2]
    last = nearest[0]
    slope = counts[last] / last
    if len(nearest) == 2:
        other = nearest[1]
        if other != last and counts[other] != counts[last]:
            slope = (counts[other] - counts[last]) / (other - last)
    slope = max(slope, 0.05)  # a count that did not grow with the words: step as if it had
    guess = last + round((target - counts[last]) / slope)
    return max(1, min(guess, 8 * target + 64))
