"""A real full filesystem: a small tmpfs mounted for one test, then filled to the last byte.

Mounting needs root (CI runs as root); elsewhere the tests that need it skip with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "256k"


@contextlib.contextmanager
def small_filesystem(where: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> None:
    """Write until the filesystem refuses: afterwards any new data fails with ENOSPC."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        block = b"\0" * 4096
        while True:
            try:
                filler.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    # Page-sized writes can leave a tail; a byte at a time takes the rest.
    with open(directory / "filler-tail", "wb", buffering=0) as tail, contextlib.suppress(OSError):
        while True:
            tail.write(b"\0")
