"""Readiness kept under watch: a server that stops saying ready while it is being warmed or load
tested fails the attempt, instead of being measured (and passed) as if nothing had happened.

`watched` runs a stage with the adapter's own readiness check (`Adapter.check_ready`, the one
the lifecycle waited on before the engine started) asked every `Tuning.readiness_interval_s`;
`Tuning.readiness_failures` failures in a row cancel the stage and raise `ReadinessLost`.
`regained` waits, before a retry, for the server to say ready again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable
from typing import TypeVar

from warmgate.entrypoint.engine.context import StageContext, log
from warmgate.entrypoint.engine.evidence import ReadinessLost
from warmgate.protocols.health import ServerNeverHealthy, wait_until_healthy

T = TypeVar("T")


async def watched(ctx: StageContext, stage: str, work: Awaitable[T]) -> T:
    """`work`'s result; raises `ReadinessLost` (or `ServerGone`) when readiness is lost first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_lost_readiness(ctx))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        reason = watcher.result()
    finally:
        for pending in (task, watcher):
            pending.cancel()
        # Let the cancelled stage finish its cleanup (phase time, progress) before going on.
        await asyncio.gather(task, watcher, return_exceptions=True)
    log.error("server readiness lost during %s: %s", stage, reason)
    # A refused connection may mean the server died: then its exit code is the outcome.
    await ctx.wait_if_server_gone()
    raise ReadinessLost(stage, reason)


async def _lost_readiness(ctx: StageContext) -> str:
    """Returns the last reason once readiness failed `readiness_failures` times in a row."""
    tuning = ctx.tuning
    timeout_s = min(tuning.readiness_timeout_s, ctx.config.server.request_timeout_s)
    failures = 0
    while True:
        await asyncio.sleep(tuning.readiness_interval_s)
        reason = await ctx.adapter.check_ready(ctx.session, timeout_s)
        if reason is None:
            failures = 0
            continue
        failures += 1
        if failures >= tuning.readiness_failures:
            return reason


async def regained(ctx: StageContext) -> None:
    """Before a retry after lost readiness: wait up to `server.start_timeout_s` for the server
    to say ready again; raises `ReadinessLost` when it does not."""
    timeout_s = ctx.config.server.start_timeout_s
    log.info("waiting up to %gs for the server to be ready again before the next attempt", timeout_s)
    check = functools.partial(ctx.adapter.check_ready, ctx.session)
    try:
        await wait_until_healthy(check, timeout_s, clock=ctx.clock)
    except ServerNeverHealthy as exc:
        await ctx.wait_if_server_gone()
        raise ReadinessLost(
            "the wait before a retry", f"not ready again within {timeout_s:g}s: {exc.last_error}"
        ) from None
