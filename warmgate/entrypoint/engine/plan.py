"""Stage 1, plan: which shapes, and every request body built once, before anything is sent.

`shapes: auto` asks the server for the model's metadata; configured shapes need no server, so the
engine plans them while the server is still loading. A shape over `warmup.max_payload_bytes` is
refused from its estimated size before its inputs are generated, then from its serialised size.
Shapes come out smallest first: an oversized shape fails last, and cheap shapes warm first. A
prompt shape (LLM servers) is planned from an estimate of its prompt; prompts.py calibrates it
against the server once the server is up.
"""

from __future__ import annotations

from warmgate.config import Config, Shape
from warmgate.entrypoint.engine.consistency import ShapeCheck
from warmgate.entrypoint.engine.context import StageContext, log
from warmgate.entrypoint.engine.evidence import PayloadInvalid, PayloadTooLarge, ShapeRun, ShapesUnavailable
from warmgate.entrypoint.engine.payloads import PayloadError, build_inputs, estimated_bytes, varies_by_variant
from warmgate.entrypoint.engine.prompts import estimated_prompt_bytes, plan_prompt, set_prompt
from warmgate.protocols import Adapter, EncodeError, MetadataError, PreparedRequest
from warmgate.protocols.prompting import PromptAdapter
from warmgate.state import ShapeReport


async def plan(ctx: StageContext) -> list[ShapeRun]:
    """The configured shapes, or those the model's metadata implies (`shapes: auto`)."""
    config = ctx.config
    if config.shapes == "auto":
        try:
            shapes = await ctx.adapter.discover_shapes(
                ctx.session, config.auto_shapes, config.server.request_timeout_s
            )
        except MetadataError as exc:
            await ctx.wait_if_server_gone()
            raise ShapesUnavailable(f"shapes: auto: {exc}") from None
        log.info("shapes from model metadata: %s", ", ".join(s.name for s in shapes))
    else:
        shapes = list(config.shapes)
    return plan_shapes(config, ctx.adapter, shapes)


def plan_shapes(config: Config, adapter: Adapter, shapes: list[Shape]) -> list[ShapeRun]:
    budget = config.warmup.max_payload_bytes
    # Refuse oversized shapes before building (let alone sending) anything: smallest first
    # also means an oversized shape would fail last, but one that cannot fit fails now.
    for shape in shapes:
        estimate = planned_bytes(shape)
        if estimate > budget:
            raise PayloadTooLarge(shape.name, estimate, budget, "estimated")
    return [_plan_shape(config, adapter, shape, budget) for shape in sorted(shapes, key=planned_bytes)]


def planned_bytes(shape: Shape) -> int:
    """A shape's size before anything is built: its inputs' raw size, or its prompt's."""
    return estimated_prompt_bytes(shape.prompt) if shape.prompt is not None else estimated_bytes(shape)


def _plan_shape(config: Config, adapter: Adapter, shape: Shape, budget: int) -> ShapeRun:
    if shape.prompt is not None:
        run = plan_prompt(config, adapter, shape, budget)
    else:
        request = _build(adapter, shape)
        if request.size > budget:
            raise PayloadTooLarge(shape.name, request.size, budget, "serialised")
        run = ShapeRun(
            shape=shape,
            request=request,
            report=ShapeReport(name=shape.name, batch_size=shape.batch_size, payload_bytes=request.size),
        )
    check = config.concurrency_check
    if not check.enabled:
        run.check_skipped = "concurrency_check.enabled is false"
    elif not shape.compare:
        run.check_skipped = (
            "compare: false on this shape (an LLM's answers may change when the server batches them)"
            if shape.prompt is not None
            else "compare: false on this shape (non-deterministic model)"
        )
    elif not adapter.comparable:
        run.check_skipped = "protocol http without server.http.output_fields"
    elif not config.load_test.enabled:
        run.check_skipped = "the load test is disabled"
    else:
        run.check = ShapeCheck(shape.name, check.rtol, check.atol)
        if shape.prompt is not None and isinstance(adapter, PromptAdapter):
            set_prompt(config, adapter, run, shape.prompt.tokens, budget)  # with its check variants
            return run
        # Variants cost memory (one body each) and warmup time (two requests each).
        variants = check.variants if varies_by_variant(shape) else 1
        variants = max(1, min(variants, budget // max(1, run.request.size)))
        run.check_requests = [run.request] + [
            _build(adapter, shape, variant) for variant in range(1, variants)
        ]
    return run


def _build(adapter: Adapter, shape: Shape, variant: int = 0) -> PreparedRequest:
    try:
        return adapter.build(build_inputs(shape, variant), shape.batch_size)
    except (PayloadError, EncodeError) as exc:
        raise PayloadInvalid(shape.name, str(exc)) from None
