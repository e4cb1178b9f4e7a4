"""`warmgate sidecar`: the probe's server with the warm cycles (warmer.py) as its companion, and a
`GET /drain` route for the server container's `preStop: httpGet` hook.

Who may call /drain: the kubelet runs an httpGet hook from the node, not from the pod's loopback,
so the route cannot be limited to localhost. It is open like the probe endpoints, and it can only
ever make the pod not ready (what terminating it does anyway): it never stops, signals or calls
the server, and a drain that no server stop follows ends by itself after `drain.grace_period_s`
with a new warm cycle. Every other endpoint stays read-only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from warmgate import exitcodes
from warmgate.config import Config
from warmgate.entrypoint.failclosed import describe_failure, record_best_effort
from warmgate.probe.app import NO_STORE, ExtraRoute
from warmgate.probe.http_server import Response
from warmgate.probe.planning import probe_settings, server_check
from warmgate.probe.server import serve
from warmgate.protocols import make_adapter
from warmgate.sidecar.warmer import SidecarTuning, Warmer
from warmgate.state import Phase, StateError, StateWriter

log = logging.getLogger("warmgate.sidecar")

DRAIN_PATH = "/drain"


def run_sidecar(
    config: Config, *, host: str, port: int, shutdown_delay_s: float, environ: Mapping[str, str] | None = None
) -> int:
    try:
        return asyncio.run(
            serve_sidecar(
                config,
                host=host,
                port=port,
                shutdown_delay_s=shutdown_delay_s,
                environ=os.environ if environ is None else environ,
            )
        )
    except Exception as exc:  # serve_sidecar fails closed itself; this is when even that failed
        log.error("warmgate sidecar failed: %s", describe_failure(exc))
        return exitcodes.WARMGATE_FAILED


async def serve_sidecar(
    config: Config,
    *,
    host: str,
    port: int,
    shutdown_delay_s: float,
    environ: Mapping[str, str],
    tuning: SidecarTuning | None = None,
    **serve_options: Any,
) -> int:
    """Serve the probes and warm the server until TERM. `serve_options` go to the probe's `serve`
    (tests inject `signals` and `on_listening`)."""
    state = StateWriter(
        config.state_dir, server_url=config.server.url, health_url=make_adapter(config.server).health_url
    )
    try:
        state.prepare()
    except StateError as exc:
        log.error("%s", exc)
        return exitcodes.STATE_DIR_UNUSABLE
    warmer = Warmer(config, state, tuning=tuning)
    try:
        settings = probe_settings(config)
        return await serve(
            settings,
            server_check(settings, config),
            host=host,
            port=port,
            shutdown_delay_s=shutdown_delay_s,
            environ=environ,
            companion=warmer,
            extra_routes=[ExtraRoute(DRAIN_PATH, drain_handler(warmer))],
            **serve_options,
        )
    except Exception as exc:
        # Fail closed: the marker goes first, then `failed` with one line; the server is not ours.
        message = f"warmgate failed: {describe_failure(exc)}"
        log.error("%s", message)
        log.debug("the failure's traceback", exc_info=exc)
        record_best_effort(state, Phase.FAILED, message)
        return exitcodes.WARMGATE_FAILED
    finally:
        state.close()


def drain_handler(warmer: Warmer) -> Callable[[], Awaitable[Response]]:
    async def drain() -> Response:
        until = warmer.drain()
        await asyncio.sleep(max(0.0, until - warmer.clock()))
        quiet = warmer.config.drain.quiet_period_s
        body = {"ok": True, "code": "drained", "reason": f"not ready for {quiet:g}s: the server may stop now"}
        return Response.json(body, 200, NO_STORE)

    return drain
