"""The engine: warmup, synthetic load test, readiness gate (being built; see issue 4)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from entrypoint.state import GateVerdict, Report

if TYPE_CHECKING:
    from entrypoint.run import RunContext


async def prove(ctx: RunContext) -> Report:
    # Until the engine lands, readiness rests on health alone, and the report says so plainly.
    config = ctx.config
    return Report(
        instance_id=ctx.state.instance_id,
        created_at=time.time(),
        server_url=config.server.url,
        protocol=config.server.protocol,
        model=config.server.model,
        phases=dict(ctx.phases),
        gate=GateVerdict(passed=True, reason="health only: no warmup engine in this build"),
    )
