"""The self-contained bundle's executable: `warmgate` with the entrypoint and the probe only.

The bundle (deploy/bundle/warmgate.spec) leaves out the reference model server (onnxruntime,
torch, tokenizers) and the Kubernetes client, so the subcommands that need them answer with one
line and exit 2 (a usage error) instead of a traceback; everything else is `warmgate.cli.main`.

PyInstaller's bootloader points LD_LIBRARY_PATH at the bundle's libraries and sets _PYI_*
variables for its own children. The model server warmgate starts must not inherit them: it would
load the bundle's libssl, libz or libpython instead of its image's own (and a server that is itself
a PyInstaller program would take our archive for its own). The dynamic loader read
LD_LIBRARY_PATH when this process started, so restoring it here changes only what children get.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# Subcommands whose dependencies are not in the bundle, and where to run them instead.
NOT_IN_BUNDLE = {
    "serve": "the reference model server needs onnxruntime or torch",
    "promote": "blue/green promotion needs the Kubernetes client",
    "warmpool": "the warm pool needs the Kubernetes client",
}
INSTEAD = "run it from the warmgate image's own install (/opt/warmgate/bin/warmgate)"


def subcommand(arguments: list[str]) -> str | None:
    """The first positional argument before any `--` (the CLI has no global option with a value)."""
    for argument in arguments:
        if argument == "--":
            return None
        if not argument.startswith("-"):
            return argument
    return None


def restore_environment(environ: MutableMapping[str, str]) -> None:
    """Undo the bootloader's additions: the container's own LD_LIBRARY_PATH (or none), no _PYI_*."""
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        environ["LD_LIBRARY_PATH"] = original
    else:
        environ.pop("LD_LIBRARY_PATH", None)
    for name in [name for name in environ if name.startswith("_PYI_")]:
        del environ[name]


def main() -> None:
    restore_environment(os.environ)
    command = subcommand(sys.argv[1:])
    if command in NOT_IN_BUNDLE:
        print(
            f"warmgate: `{command}` is not in this self-contained bundle (entrypoint and probe only): "
            f"{NOT_IN_BUNDLE[command]}; {INSTEAD}",
            file=sys.stderr,
        )
        sys.exit(2)
    from warmgate.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
