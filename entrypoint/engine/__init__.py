"""The engine: warmup, synthetic load test, post-warm check, memory and the readiness gate.

`prove` is the prover run.py calls once the server is healthy. The modules are imported when it
runs, not when this package is imported: protocols/ imports the payload builder from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from entrypoint.run import RunContext
    from entrypoint.state import Report


async def prove(ctx: RunContext) -> Report:
    # Imported here, not at the top: entrypoint.protocols imports entrypoint.engine.payloads, and
    # a package that imported protocols on import would make that a cycle.
    from entrypoint.engine.core import Engine

    engine = Engine(
        ctx.config,
        ctx.session,
        ctx.state,
        server_pid=ctx.server.pid,
        server_exited=ctx.server.exited,
        phases=ctx.phases,
    )
    return await engine.prove()
