"""Everything the probe needs to serve, resolved from the validated config into plain values.

`warmgate probe` validates the whole config (pydantic, the protocol registry) and then execs a
fresh interpreter that serves from these settings alone (probe/launch.py), so the sidecar's
resident memory holds no config models, no aiohttp and no protocol adapters (docs/probe.md,
"Memory"). They travel across the exec as JSON, and are decoded strictly: whatever reads them is
a fresh process that trusts nothing it did not check.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from warmgate.errors import ConfigError
from warmgate.protocols.readiness import Endpoint

# The readiness-gate condition's default type (probe.readiness_gate.condition_type).
DEFAULT_CONDITION_TYPE = "warmgate.dev/warm"


@dataclass(frozen=True)
class ProbeSettings:
    state_dir: Path
    # Every endpoint that must answer 200 (and pass its body check) for ready, and the one that
    # must answer for alive. Empty and None for a protocol that checks over its own transport
    # (gRPC): the probe then checks through the protocol's adapter, in its own process.
    ready_endpoints: tuple[Endpoint, ...]
    live_endpoint: Endpoint | None
    check_timeout_s: float
    check_cache_s: float
    live_failures: int
    # The model server's Prometheus page, read for the shapes it served (shapes.py); None: not read.
    server_metrics_url: str | None = None
    # probe.readiness_gate: whether the probe sets a pod condition, and its type.
    readiness_gate: bool = False
    condition_type: str = DEFAULT_CONDITION_TYPE

    @property
    def checks_over_http(self) -> bool:
        return bool(self.ready_endpoints) and self.live_endpoint is not None


class Listen(NamedTuple):
    """Where the probe server listens and how long it answers 503 after TERM."""

    host: str
    port: int
    shutdown_delay_s: float


@dataclass(frozen=True)
class Launch:
    """What the exec'd serving process is handed: its settings, where to listen, and the log level."""

    settings: ProbeSettings
    listen: Listen
    log_level: int = logging.INFO

    def encode(self) -> bytes:
        return msgspec.json.encode(self, enc_hook=_encode_path)

    @classmethod
    def decode(cls, data: bytes) -> Launch:
        """Raises ConfigError (one line) for anything that is not a launch document."""
        try:
            return msgspec.json.decode(data, type=cls, dec_hook=_decode_path)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConfigError(f"the probe's launch settings are not usable: {exc}") from None


def _encode_path(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _decode_path(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind}")
