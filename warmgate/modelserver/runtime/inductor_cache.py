"""torch.compile's artifacts kept across pods: Inductor's FX graph / AOTAutograd / kernel caches and
Triton's kernels, stored as one keyed entry of the artifact store (warmgate/artifacts/store.py).

Measured on the CPU demo (torch 2.13): an FX graph cache hit takes the first compiled calls from
~16 s to ~2 s; loading torch.compiler's portable "mega-cache" (load_cache_artifacts) into an empty
Inductor directory gave no measurable win, so the Inductor directory itself is what is stored.

Inductor writes into its directory while it compiles, so it never works inside a stored entry
(that would change the entry under its manifest): the server points it at a private working
directory, seeded with a copy of the matching entry, and publishes that directory after warmup
when there was no entry yet (first writer wins).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from warmgate.artifacts.store import ArtifactStore, file_digest, open_store, payload_files
from warmgate.modelserver.runtime import devices

log = logging.getLogger(__name__)

KIND = "torch-inductor"


class CompileCache:
    """The working directory Inductor compiles into, and when to store it.

    warmgate's warmup (outside the server) compiles each batch size on its first request, so the
    server cannot know when warmup ended: after each compile a background thread stores the
    directory once compiles have been quiet for QUIET_S (an entry only grows, see store.publish),
    and close() or warmed() stores what is pending at once.
    """

    QUIET_S = 0.5

    def __init__(self, store: ArtifactStore, label: str, key: dict[str, str], work: Path, hit: bool) -> None:
        self.store = store
        self.label = label
        self.key = key
        self.work = work
        self.hit = hit
        self._stored_files = payload_files(work) if hit else set()
        self._lock = threading.Lock()
        self._compiled = threading.Event()
        self._thread: threading.Thread | None = None

    def compiled(self) -> None:
        """A new shape was compiled: store the directory soon, off the request path."""
        self._compiled.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._store_when_quiet, name="compile-cache", daemon=True)
            self._thread.start()

    def publish(self) -> None:
        """Store the directory now if it holds files the stored entry lacks. Never raises."""
        with self._lock:
            try:
                files = payload_files(self.work)
                if not files or files <= self._stored_files:
                    return
                if self.store.publish(KIND, self.label, self.key, self.work, grow=True) is not None:
                    self._stored_files = files
            except OSError as exc:
                log.warning("cache: cannot store %s for %s: %s", KIND, self.label, exc)

    def _store_when_quiet(self) -> None:
        while True:
            self._compiled.wait()
            self._compiled.clear()
            # Another compile within QUIET_S restarts the wait: one store for a burst of compiles.
            if self._compiled.wait(self.QUIET_S):
                continue
            self.publish()


def activate(
    cache_dir: Path, model_path: Path, *, device: str, dtype: str, mode: str | None, backend: str
) -> CompileCache | None:
    """Point Inductor and Triton at a working directory seeded from the matching entry.

    Called before torch.compile in the process that compiles, or in the parent before fork (the
    workers inherit the environment). Never fails a start: on any error the cache is off.
    """
    import torch

    try:
        key = {
            "model": file_digest(model_path),
            "torch": torch.__version__,
            "device": device,
            "gpu": devices.gpu_identity() if device != "cpu" else "none",
            "cpu": devices.cpu_fingerprint(),
            "dtype": dtype,
            "mode": mode or "default",
            "backend": backend,
        }
        store = open_store(cache_dir, os.environ)
        work = Path(tempfile.mkdtemp(prefix="warmgate-inductor-"))
        atexit.register(_remove_by_owner, work, os.getpid())
        entry = store.lookup(KIND, model_path.stem, key)
        hit = False
        if entry is not None:
            try:
                shutil.copytree(entry.payload, work, dirs_exist_ok=True)
                hit = True
            except OSError as exc:
                log.warning(
                    "cache: cannot copy %s entry %s (%s); compiling afresh", KIND, entry.path.name, exc
                )
    except OSError as exc:
        log.warning("cache: torch.compile cache off (%s)", exc)
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(work / "triton")
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    return CompileCache(store, model_path.stem, key, work, hit)


def _remove_by_owner(work: Path, owner: int) -> None:
    # Only the creating process removes it: forked workers share it and exit earlier.
    if os.getpid() == owner:
        shutil.rmtree(work, ignore_errors=True)
