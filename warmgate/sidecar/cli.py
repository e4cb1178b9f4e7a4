"""`warmgate sidecar`: warm and gate a server from beside it, when its entrypoint cannot change."""

from __future__ import annotations

import argparse
import logging
from urllib.parse import urlsplit

from warmgate.config import Config, ConfigError
from warmgate.configfile import add_config_argument, config_from_args
from warmgate.probe.cli import add_listen_arguments, listen_from_args
from warmgate.redact import redact_urls

log = logging.getLogger("warmgate.sidecar")

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
    # The probe's own flags: after TERM the sidecar answers 503 for --shutdown-delay, and longer
    # while a drain holds the server's preStop hook.
    add_listen_arguments(sidecar)
    sidecar.set_defaults(handler=handle_sidecar)


def handle_sidecar(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # it sends the warmup: its data files must be there
    listen = listen_from_args(args, config)
    check_ports_differ(config, listen.port)
    if config.server.command:
        log.info("sidecar mode: server.command is ignored (the server runs in its own container)")
    # Imported here: registering subcommands stays argparse-light, and `warmgate probe` must
    # never pay for the engine.
    from warmgate.sidecar.main import run_sidecar

    return run_sidecar(config, host=listen.host, port=listen.port, shutdown_delay_s=listen.shutdown_delay_s)


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
