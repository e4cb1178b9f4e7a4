"""`python -m modelserver --demo ...` runs `warmgate serve --demo ...`."""

from __future__ import annotations

import sys

from warmgate.cli import run_cli

if __name__ == "__main__":
    sys.exit(run_cli(["serve", *sys.argv[1:]]))
