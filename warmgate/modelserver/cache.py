"""The cache directory for generated models, and atomic file writes.

Compiled artifacts (optimised models, engines, compile caches) live under the same directory in
the keyed store of warmgate/artifacts/store.py.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from warmgate.artifacts.environment import CACHE_ENV

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "default_cache_dir", "usable_cache_dir", "write_atomically"]


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV])
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "warmgate"
    return Path(environ.get("HOME") or Path.home()) / ".cache" / "warmgate"


def usable_cache_dir(preferred: Path) -> Path:
    """`preferred` if we can write there, else a per-user temp dir.

    Containers often run with a read-only root file system or a HOME that is not writable; the
    server must still start, paying generation again instead of failing.
    """
    if _writable(preferred):
        return preferred
    fallback = Path(tempfile.gettempdir()) / f"warmgate-cache-{os.getuid()}"
    if _writable(fallback):
        log.warning("cache dir %s is not writable; using %s", preferred, fallback)
        return fallback
    fresh = Path(tempfile.mkdtemp(prefix="warmgate-cache-"))
    log.warning("cache dir %s and %s are not writable; using %s", preferred, fallback, fresh)
    return fresh


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe-"):
            pass
    except OSError:
        return False
    return True


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temp file beside `path`, fsync it, and rename it over `path`.

    Concurrent servers generating the same file each rename a complete copy; none reads half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
