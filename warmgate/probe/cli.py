"""`warmgate probe`: the sidecar that answers the kubelet's probes and serves /metrics."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from warmgate.config import Config, ConfigError
from warmgate.configfile import add_config_argument, config_from_args

if TYPE_CHECKING:
    # Only when serving: building the CLI's parser must not load the probe's modules.
    from warmgate.probe.settings import Listen

# After TERM the sidecar keeps answering 503 this long, so kubelet probes of the terminating pod
# read "not ready" instead of refused connections; short enough not to hold up pod deletion.
SHUTDOWN_DELAY_DEFAULT_S = 2.0


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = subparsers.add_parser(
        "probe",
        help="the sidecar: kubelet probes and /metrics from the state files",
        description="Serve the kubelet's startup/readiness/liveness probes and Prometheus metrics from "
        "the state the entrypoint writes, checking the model server itself; optionally set a pod "
        "readiness-gate condition (probe.readiness_gate in the config).",
    )
    add_config_argument(probe)
    add_listen_arguments(probe)
    probe.set_defaults(handler=handle_probe)


def handle_probe(args: argparse.Namespace) -> int:
    import logging
    import os

    from warmgate.probe.launch import exec_serving
    from warmgate.probe.planning import probe_settings, server_check
    from warmgate.probe.readiness_gate import check_gate_environment
    from warmgate.probe.server import run_probe
    from warmgate.probe.settings import Launch

    config = config_from_args(args, check_files=False)  # it never reads the warmup data
    listen = listen_from_args(args, config)
    settings = probe_settings(config)
    if settings.readiness_gate:
        # Refused here, in one line, rather than by the serving process after the exec.
        check_gate_environment(os.environ)
    if settings.checks_over_http:
        # Returns only when the exec cannot be done (said why): then this process serves.
        exec_serving(Launch(settings, listen, logging.getLogger().level))
    return run_probe(settings, server_check(settings, config), listen)


def add_listen_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --shutdown-delay, shared with `warmgate sidecar` (it serves the same probes)."""
    parser.add_argument("--host", default=None, help="address to listen on (default: probe.host, 0.0.0.0)")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on; 0 picks a free one (default: probe.port, 8086)",
    )
    parser.add_argument(
        "--shutdown-delay",
        type=float,
        default=SHUTDOWN_DELAY_DEFAULT_S,
        metavar="SECONDS",
        help="after TERM, answer 503 this long before exiting (default: %(default)s)",
    )


def listen_from_args(args: argparse.Namespace, config: Config) -> Listen:
    """The flags over the config's probe section; a bad value is a ConfigError (exit 2)."""
    from warmgate.probe.settings import Listen

    port = config.probe.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: must be between 0 and 65535, got {port}")
    if args.shutdown_delay < 0:
        raise ConfigError(f"--shutdown-delay: must be >= 0, got {args.shutdown_delay:g}")
    host = config.probe.host if args.host is None else args.host
    return Listen(host, port, args.shutdown_delay)
