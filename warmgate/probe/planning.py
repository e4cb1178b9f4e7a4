"""From the validated config to the probe's settings, and the check of a server whose protocol
has its own transport.

This module loads the config models and the protocol registry (pydantic, aiohttp): it runs in
`warmgate probe` before the exec into the lean serving process, and in the processes that keep
the probe in-process (`warmgate sidecar`, and the probe of a gRPC server, whose checks need the
gRPC stack anyway).
"""

from __future__ import annotations

import aiohttp

from warmgate.config import Config
from warmgate.probe.server_check import HttpServerCheck, ServerCheck
from warmgate.probe.settings import ProbeSettings
from warmgate.protocols import Adapter, make_adapter

# The probe talks to one model server on the pod network: a handful of pooled connections is
# plenty, and a bounded pool keeps a stuck server from costing the sidecar file descriptors.
CONNECTION_LIMIT = 8


def probe_settings(config: Config, adapter: Adapter | None = None) -> ProbeSettings:
    """The probe's settings; raises ConfigError where the protocol cannot be checked as configured."""
    protocol = make_adapter(config.server) if adapter is None else adapter
    probe = config.probe
    server = config.server
    # `warmgate serve` (protocol oip) serves /metrics beside its API; other servers' pages
    # carry no shapes, and a missing page only means no unwarmed-shape samples.
    metrics_url = None
    if server.protocol == "oip" and server.url.startswith(("http://", "https://")):
        metrics_url = server.url.rstrip("/") + "/metrics"
    over_http = _checks_over_http(protocol)
    return ProbeSettings(
        state_dir=config.state_dir,
        ready_endpoints=tuple(protocol.readiness_endpoints()) if over_http else (),
        live_endpoint=protocol.liveness_endpoint() if over_http else None,
        check_timeout_s=probe.check_timeout_s,
        check_cache_s=probe.check_cache_s,
        live_failures=probe.live_failures,
        server_metrics_url=metrics_url,
        readiness_gate=probe.readiness_gate.enabled,
        condition_type=probe.readiness_gate.condition_type,
    )


def server_check(settings: ProbeSettings, config: Config) -> ServerCheck:
    """The check the probe asks: over HTTP where the protocol names endpoints, else its adapter's."""
    if settings.checks_over_http:
        assert settings.live_endpoint is not None
        return HttpServerCheck(settings.ready_endpoints, settings.live_endpoint, settings.check_timeout_s)
    return AdapterServerCheck(make_adapter(config.server), settings.check_timeout_s)


def _checks_over_http(adapter: Adapter) -> bool:
    # A protocol with its own transport (oip-grpc) overrides the checks; HTTP protocols only name
    # their endpoints (Adapter.readiness_endpoints, liveness_endpoint).
    kind = type(adapter)
    return kind.check_ready is Adapter.check_ready and kind.check_live is Adapter.check_live


class AdapterServerCheck:
    """The protocol's own checks (`Adapter.check_ready` / `check_live`), for a protocol that
    checks over its own transport; the adapter owns that transport and closes it."""

    def __init__(self, adapter: Adapter, timeout_s: float) -> None:
        self.adapter = adapter
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def ready(self) -> str | None:
        return await self.adapter.check_ready(self._open(), self.timeout_s)

    async def live(self) -> str | None:
        return await self.adapter.check_live(self._open(), self.timeout_s)

    async def fetch_text(self, url: str, max_bytes: int) -> str | None:
        # Only an oip server over HTTP has a metrics page the probe reads, and it is checked over HTTP.
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.adapter.aclose()

    def _open(self) -> aiohttp.ClientSession:
        # Made in the running loop, on the first check.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=CONNECTION_LIMIT)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        return self._session
