"""The engine: warmup, synthetic load test, post-warm check, memory and the readiness gate.

`make_prover` builds the prover run.py drives: `prepare` while the server loads, `prove` once it is
healthy. The modules are imported when it runs, not when this package is imported: protocols/
imports the payload builder from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from warmgate.entrypoint.engine.core import Engine
    from warmgate.entrypoint.run import RunContext


def make_prover(ctx: RunContext) -> Engine:
    # Imported here, not at the top: warmgate.protocols imports warmgate.entrypoint.engine.payloads, and
    # a package that imported protocols on import would make that a cycle.
    from warmgate.entrypoint.engine.core import Engine

    return Engine(
        ctx.config,
        ctx.session,
        ctx.state,
        server_pid=ctx.server.pid,
        server_exited=ctx.server.exited,
        phases=ctx.phases,
    )
