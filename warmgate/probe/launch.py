"""`warmgate probe` in two steps: validate in full, then exec a lean process that serves.

The sidecar runs in every pod of a deployment, so its resident memory is paid once per replica.
Validating the config needs pydantic and the protocol adapters (aiohttp), about 30 MiB that
serving the probes never uses again, and Python cannot unload a module. So `warmgate probe`
validates as every other subcommand does (a bad config still exits 2 with its one line), resolves
the config into `ProbeSettings`, and replaces itself (exec: same PID, so signals, the kubelet and
the container runtime see no difference) with an interpreter that imports only what serving
needs: asyncio, httptools, prometheus-client, msgspec and the probe's own modules.

The settings travel in an anonymous in-memory file (memfd) whose descriptor the new process
inherits: not on the command line, where every process in the pod could read a credential in
the server URL, and not on a filesystem, which may be read-only. A protocol whose checks need its
own transport (gRPC) keeps the probe in-process instead: it needs those libraries anyway.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from warmgate.errors import ConfigError

# The hidden subcommand the exec runs (warmgate/cli.py dispatches it before building any parser):
# not for people, so not in --help.
from warmgate.probe import SERVE_COMMAND
from warmgate.probe.settings import Launch

log = logging.getLogger("warmgate.probe")

# Settings are a few hundred bytes; a larger file is not one `warmgate probe` wrote.
LAUNCH_MAX_BYTES = 1 << 20


def serving_argv(fd: int) -> list[str]:
    """The command line of the serving process, reading its settings from descriptor `fd`."""
    if getattr(sys, "frozen", False):
        # The self-contained bundle (deploy/bundle): its executable is warmgate itself.
        return [sys.executable, SERVE_COMMAND, "--launch-fd", str(fd)]
    return [sys.executable, "-m", "warmgate", SERVE_COMMAND, "--launch-fd", str(fd)]


def exec_serving(launch: Launch) -> None:
    """Replace this process with the lean serving one. Returns only when the exec could not be
    done, after saying why (the caller then serves in this process)."""
    try:
        fd = os.memfd_create("warmgate-probe-launch", 0)
        os.write(fd, launch.encode())
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        argv = serving_argv(fd)
    except (OSError, AttributeError) as exc:  # no memfd (not Linux): serve here, heavier
        log.warning("serving in this process (cannot hand the settings over: %s)", exc)
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(argv[0], argv)  # noqa: S606 - a fixed argv, no shell
    except OSError as exc:
        os.close(fd)
        log.warning("serving in this process (cannot exec %s: %s)", argv[0], exc.strerror or exc)


def read_launch(arguments: Sequence[str]) -> Launch:
    """The settings `exec_serving` handed over; raises ConfigError (one line)."""
    parser = argparse.ArgumentParser(prog=f"warmgate {SERVE_COMMAND}", add_help=False)
    parser.add_argument("--launch-fd", type=int, required=True)
    args, unknown = parser.parse_known_args(list(arguments))
    if unknown:
        raise ConfigError(f"{SERVE_COMMAND}: unexpected arguments {' '.join(unknown)}")
    try:
        with os.fdopen(args.launch_fd, "rb") as source:
            data = source.read(LAUNCH_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"{SERVE_COMMAND} serves what `warmgate probe` hands it; run `warmgate probe` "
            f"(descriptor {args.launch_fd}: {exc.strerror or exc})"
        ) from None
    if len(data) > LAUNCH_MAX_BYTES:
        raise ConfigError(f"{SERVE_COMMAND}: the launch settings are over {LAUNCH_MAX_BYTES} bytes")
    return Launch.decode(data)


def serve_launch(arguments: Sequence[str]) -> int:
    """The serving process's whole life: read the settings, serve until TERM, return the exit code."""
    launch = read_launch(arguments)
    logging.getLogger().setLevel(launch.log_level)
    from warmgate.probe.server import run_probe
    from warmgate.probe.server_check import HttpServerCheck

    settings = launch.settings
    if settings.live_endpoint is None or not settings.ready_endpoints:
        raise ConfigError(f"{SERVE_COMMAND}: the launch settings name no server endpoints to check")
    check = HttpServerCheck(settings.ready_endpoints, settings.live_endpoint, settings.check_timeout_s)
    return run_probe(settings, check, launch.listen)
