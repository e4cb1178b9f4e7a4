from __future__ import annotations

import subprocess
import sys

from tests.modelserver.procs import REPO

HEAVY = ("numpy", "torch", "onnxruntime", "aiohttp", "tokenizers")


def test_registering_the_subcommand_imports_nothing_heavy() -> None:
    # `warmgate` imports every part's cli module to build its parser; PID 1 must never pull in torch.
    code = (
        "import argparse, sys, warmgate.modelserver.cli as c; "
        "c.add_parsers(argparse.ArgumentParser().add_subparsers()); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
