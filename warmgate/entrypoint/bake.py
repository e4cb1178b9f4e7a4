"""`warmgate bake`: pay a model version's one-time compile costs once, outside serving.

It runs what `warmgate run --once` runs (same config, same server command, same warmup) with the
cache directory exported to the server, but writes its state to a throwaway directory (no ready
marker where a probe could see it) and skips the load test unless asked. Then it checks that the
cache holds artifacts, so a CI step or a Kubernetes Job can fill a volume or image layer for the
first pod of a new version.

Exit codes: 0 when the server warmed and the cache holds artifacts; 2 for a bad config or no cache
directory; CACHE_EMPTY when the run succeeded but nothing was cached (a server that ignores the
exported variables); otherwise `warmgate run`'s own codes (81 never healthy, 83 warmgate failed,
the server's code when it exited). A gate verdict is not bake's concern: a failed gate (80) is
logged, and the cache is still checked.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from warmgate import exitcodes
from warmgate.artifacts.environment import CACHE_ENV
from warmgate.configfile import add_config_argument, config_from_args

if TYPE_CHECKING:
    from warmgate.config import Config

log = logging.getLogger("warmgate.bake")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bake = subparsers.add_parser(
        "bake",
        help="warm the server once, outside serving, to fill the compile cache",
        description="Start the model server with the cache directory exported, warm it as "
        "`warmgate run` would (no ready marker, no load test unless --load-test), stop it, and check "
        "that the cache now holds artifacts. For a build step or a Job that prepares the cache for "
        "the first pod of a new model version.",
    )
    add_config_argument(bake)
    bake.add_argument(
        "--cache-dir",
        type=Path,
        help=f"the cache directory to fill (default: ${CACHE_ENV}; one of the two is required)",
    )
    bake.add_argument("--load-test", action="store_true", help="also run the configured load test")
    bake.usage = bake.format_usage().removeprefix("usage: ").rstrip() + " [-- SERVER COMMAND...]"
    bake.set_defaults(handler=handle_bake, accepts_server_command=True)


def handle_bake(args: argparse.Namespace) -> int:
    import tempfile

    from warmgate.config import ConfigError

    cache_dir: Path | None = args.cache_dir or (
        Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else None
    )
    if cache_dir is None:
        raise ConfigError(f"bake needs a cache directory: --cache-dir or ${CACHE_ENV}")
    cache_dir = cache_dir.absolute()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--cache-dir {cache_dir}: cannot create it: {exc.strerror}") from None
    config = config_from_args(args)
    command = list(args.server_command) or list(config.server.command)
    if not command:
        raise ConfigError("no server command: give one after `--` or set server.command")
    before = cache_contents(cache_dir)
    # `warmgate run` exports the cache variables under $WARMGATE_CACHE_DIR to the server it starts
    # (spawn.server_environment): bake only says which directory.
    os.environ[CACHE_ENV] = str(cache_dir)
    with tempfile.TemporaryDirectory(prefix="warmgate-bake-") as state_dir:
        updates: dict[str, object] = {"state_dir": Path(state_dir)}
        if not args.load_test:
            updates["load_test"] = config.load_test.model_copy(update={"enabled": False})
        baking = config.model_copy(update=updates)
        log.info(
            "bake: filling %s (state in %s, load test %s)",
            cache_dir,
            state_dir,
            "on" if args.load_test else "off",
        )
        code = _run_once(baking, command)
    if code == exitcodes.GATE_FAILED:
        log.warning("bake: the gate failed (see above); checking the cache anyway")
    elif code != exitcodes.OK:
        log.error("bake: the warm run failed with exit code %d; nothing checked", code)
        return code
    after = cache_contents(cache_dir)
    if not after:
        log.error(
            "bake: %s holds no artifacts after the warm run: does the server use the exported cache "
            "variables (docs/engine.md, warm artifacts)?",
            cache_dir,
        )
        return exitcodes.CACHE_EMPTY
    added = sorted(set(after) - set(before))
    total = sum(after.values())
    log.info(
        "bake: %s holds %d artifact groups (%.1f MiB); new: %s",
        cache_dir,
        len(after),
        total / (1 << 20),
        ", ".join(added) or "none (all were cached already)",
    )
    return exitcodes.OK


def _run_once(config: Config, command: list[str]) -> int:
    from warmgate.entrypoint.run import run
    from warmgate.entrypoint.spawn import resolve_self

    return run(config, resolve_self(command), once=True)


def cache_contents(cache_dir: Path) -> dict[str, int]:
    """Artifact groups in the cache and their bytes: the store's entries (kind/name) and every
    non-empty directory a third-party server fills through the exported variables."""
    from warmgate.artifacts.store import ArtifactStore

    contents = {
        f"{entry.path.parent.name}/{entry.path.name}": entry.size
        for entry in ArtifactStore(cache_dir).entries()
    }
    for name in ("torchinductor", "triton", "vllm", "cuda", "ort-tensorrt", "tensorrt"):
        size = _tree_bytes(cache_dir / name)
        if size:
            contents[name] = size
    return contents


def _tree_bytes(directory: Path) -> int:
    total = 0
    if directory.is_dir():
        for path in directory.rglob("*"):
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:
                continue
    return total
