"""`warmgate sidecar`: warm and gate a server from beside it, when its entrypoint cannot change."""

from __future__ import annotations

import argparse
import logging
from urllib.parse import urlsplit

from warmgate.config import Config, ConfigError
from warmgate.configfile import add_config_argument, config_from_args
from warmgate.redact import redact_urls

log = logging.getLogger("warmgate.sidecar")

# As `warmgate probe`: after TERM, answer 503 this long before exiting (and longer while a drain
# holds the server's preStop hook).
SHUTDOWN_DELAY_DEFAULT_S = 2.0
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sidecar = subparsers.add_parser(
        "sidecar",
        help="sidecar-only mode: warm, gate and probe a server beside it",
        description="Wait for the server at server.url, warm it, load-test it and gate it (the engine of "
        "`warmgate run`), serve the probes and /metrics like `warmgate probe`, warm again after the "
        "server restarts, and answer GET /drain (the server container's preStop hook) by failing "
        "readiness for drain.quiet_period_s. server.command is ignored.",
    )
    add_config_argument(sidecar)
    sidecar.add_argument("--host", default=None, help="address to listen on (default: probe.host, 0.0.0.0)")
    sidecar.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on; 0 picks a free one (default: probe.port, 8086)",
    )
    sidecar.add_argument(
        "--shutdown-delay",
        type=float,
        default=SHUTDOWN_DELAY_DEFAULT_S,
        metavar="SECONDS",
        help="after TERM, answer 503 this long before exiting (default: %(default)s)",
    )
    sidecar.set_defaults(handler=handle_sidecar)


def handle_sidecar(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # it sends the warmup: its data files must be there
    port = config.probe.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be between 0 and 65535, got {port}")
    if args.shutdown_delay < 0:
        raise ConfigError(f"--shutdown-delay: must be >= 0, got {args.shutdown_delay:g}")
    check_ports_differ(config, port)
    if config.server.command:
        log.info("sidecar mode: server.command is ignored (the server runs in its own container)")
    host = config.probe.host if args.host is None else args.host
    # Imported here: registering subcommands stays argparse-light, and `warmgate probe` must
    # never pay for the engine.
    from warmgate.sidecar.main import run_sidecar

    return run_sidecar(config, host=host, port=port, shutdown_delay_s=args.shutdown_delay)


def check_ports_differ(config: Config, port: int) -> None:
    """In one pod the sidecar and a server on localhost share the network: one port cannot be both."""
    url = urlsplit(config.server.url)
    try:
        server_port = url.port
    except ValueError:
        return
    if url.hostname in LOOPBACK_HOSTS and server_port == port:
        raise ConfigError(
            f"probe.port: {port} is also the port of server.url {redact_urls(config.server.url)}"
        )
