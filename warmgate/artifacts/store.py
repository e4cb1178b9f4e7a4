"""A keyed cache of build artifacts (optimised models, engines, compile caches) in one directory.

Layout: <root>/artifacts/<kind>/<label>-<digest>/{manifest.json, payload/...}, where digest hashes
the key (model digest, library versions, device, options). The manifest repeats the key and lists
every payload file with its size and SHA-256, so a start can tell a matching entry from one that
was written for something else ("mismatch") or damaged ("corrupt").

Rules, because several pods fill one volume at once and a cache must never fail a start:
- an entry appears by one rename of a complete staging directory: readers see all of it or none;
  when two writers race, the first rename wins and the second discards its copy;
- a mismatched or corrupt entry is logged with ONE warning line, removed, and rebuilt by the
  caller: lookup returns None;
- the store is bounded: after each publish the least recently used entries beyond `max_bytes`
  are removed (a hit touches the entry's directory mtime);
- every OSError on the way is a miss or a skipped publish, never an exception to the caller.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("warmgate.artifacts")

MANIFEST = "manifest.json"
PAYLOAD = "payload"
FORMAT = 1
DEFAULT_MAX_BYTES = 20 << 30
# A staging directory older than this belongs to a writer that died: removed by the next sweep.
STALE_STAGING_S = 3600.0

Key = Mapping[str, str]


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: dict[str, Any]

    @property
    def payload(self) -> Path:
        return self.path / PAYLOAD

    @property
    def size(self) -> int:
        return int(self.manifest.get("size", 0))


class EntryProblem(Exception):
    """Why an entry cannot be used: the text of the one warning line."""


def key_digest(key: Key) -> str:
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:20]


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def open_store(directory: Path, environ: Mapping[str, str]) -> ArtifactStore:
    """The store a model server uses: `directory` (its own, writable), bounded by
    $WARMGATE_CACHE_MAX_BYTES, also reading $WARMGATE_CACHE_DIR when that is another directory
    (a read-only image volume makes the server fall back to a temp dir for what it writes)."""
    from warmgate.artifacts.environment import CACHE_ENV, MAX_BYTES_ENV

    seed = environ.get(CACHE_ENV)
    read_only = [Path(seed)] if seed and Path(seed).absolute() != directory.absolute() else []
    return ArtifactStore(directory, max_bytes_from(environ, MAX_BYTES_ENV), read_only=read_only)


def max_bytes_from(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        log.warning("%s=%r is not a positive number of bytes; using %d", name, value, DEFAULT_MAX_BYTES)
        return DEFAULT_MAX_BYTES
    return limit


class ArtifactStore:
    def __init__(
        self,
        root: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        read_only: Sequence[Path] = (),
    ):
        self.root = root / "artifacts"
        self.max_bytes = max_bytes
        self._clock = clock
        # Caches only read from (an image volume a build filled, a read-only mount): consulted
        # after `root` misses; never written, touched or cleaned.
        self.read_only = tuple(r / "artifacts" for r in read_only if r / "artifacts" != self.root)

    def entry_path(self, kind: str, label: str, key: Key) -> Path:
        return self.root / kind / f"{_safe(label)}-{key_digest(key)}"

    def lookup(self, kind: str, label: str, key: Key) -> Entry | None:
        """The matching, intact entry, or None (with one warning line when something was ignored)."""
        path = self.entry_path(kind, label, key)
        try:
            entry = _verified(path, kind, key)
        except FileNotFoundError:
            found = self._lookup_read_only(kind, path, key)
            if found is None:
                self._explain_miss(kind, label, key)
            return found
        except EntryProblem as problem:
            log.warning("cache: ignoring %s entry %s (%s); building a fresh one", kind, path.name, problem)
            self.remove(path)
            return None
        except OSError as exc:
            log.warning("cache: cannot read %s entry %s (%s); building a fresh one", kind, path.name, exc)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used is judged by this mtime
        log.info("cache: hit %s entry %s", kind, path.name)
        return entry

    def publish(
        self, kind: str, label: str, key: Key, source: Path, *, move: bool = False, grow: bool = False
    ) -> Entry | None:
        """Make `source` (a directory or one file) the payload of the entry for `key`.

        First writer wins: if the entry exists already, this copy is discarded, unless `grow` and
        this copy holds every file of the existing one and more (a compile cache that learnt new
        shapes). Returns the entry now in place, or None when the store cannot be written (logged,
        never raised).
        """
        final = self.entry_path(kind, label, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=final.parent))
        except OSError as exc:
            log.warning("cache: cannot write %s: %s", final.parent, exc)
            return None
        try:
            payload = staging / PAYLOAD
            if source.is_dir():
                (shutil.move if move else _copytree)(str(source), str(payload))
            else:
                payload.mkdir()
                (shutil.move if move else shutil.copy2)(str(source), str(payload / source.name))
            manifest = _manifest(kind, label, key, payload, self._clock())
            _write_json(staging / MANIFEST, manifest)
            try:
                os.rename(staging, final)
            except OSError:
                if not final.exists():
                    raise
                if not (grow and self._replace_smaller(final, staging, manifest)):
                    log.info("cache: %s entry %s was published by another writer first", kind, final.name)
                else:
                    log.info("cache: grew %s entry %s (%d bytes)", kind, final.name, manifest["size"])
            else:
                log.info("cache: stored %s entry %s (%d bytes)", kind, final.name, manifest["size"])
        except OSError as exc:
            log.warning("cache: cannot store %s entry %s: %s", kind, final.name, exc)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=final)
        try:
            return _verified(final, kind, key, check_digests=False)
        except (OSError, EntryProblem):
            return None

    def _replace_smaller(self, final: Path, staging: Path, manifest: dict[str, Any]) -> bool:
        """Swap in `staging` when it strictly contains the entry at `final`. Between the two renames a
        reader sees no entry (a miss, never half an entry); a racing writer makes the second rename
        fail, and this copy is dropped."""
        try:
            current = set(json.loads((final / MANIFEST).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            current = set()
        if not current < set(manifest["files"]):
            return False
        self.remove(final)
        try:
            os.rename(staging, final)
        except OSError:
            return False
        return True

    def entries(self) -> list[Entry]:
        """Every entry with a readable manifest (not verified), any kind."""
        found = []
        for path in self._entry_dirs():
            with contextlib.suppress(OSError, ValueError):
                found.append(Entry(path, json.loads((path / MANIFEST).read_text())))
        return found

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used entries until the total is within max_bytes; also stale staging."""
        now = self._clock()
        sized: list[tuple[float, int, Path]] = []
        for path in self._entry_dirs():
            try:
                used = path.stat().st_mtime
                size = int(json.loads((path / MANIFEST).read_text()).get("size", 0))
            except (OSError, ValueError):
                used, size = 0.0, _tree_size(path)
            sized.append((used, size, path))
        for kind_dir in self._kind_dirs():
            for staging in kind_dir.glob(".staging-*"):
                with contextlib.suppress(OSError):
                    if now - staging.stat().st_mtime > STALE_STAGING_S:
                        shutil.rmtree(staging, ignore_errors=True)
        total = sum(size for _, size, _ in sized)
        removed = []
        for _used, size, path in sorted(sized):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            self.remove(path)
            total -= size
            removed.append(path)
        if removed:
            log.info(
                "cache: evicted %d least recently used entries (limit %d bytes)", len(removed), self.max_bytes
            )
        return removed

    def _lookup_read_only(self, kind: str, writable_path: Path, key: Key) -> Entry | None:
        for root in self.read_only:
            path = root / kind / writable_path.name
            try:
                entry = _verified(path, kind, key)
            except FileNotFoundError:
                continue
            except (EntryProblem, OSError) as problem:
                log.warning(
                    "cache: ignoring %s entry %s in read-only %s (%s); building a fresh one",
                    kind,
                    path.name,
                    root.parent,
                    problem,
                )
                return None
            log.info("cache: hit %s entry %s (read-only %s)", kind, path.name, root.parent)
            return entry
        return None

    def _explain_miss(self, kind: str, label: str, key: Key) -> None:
        """One warning when entries for the same label exist but for another key (an upgrade, another
        CPU or GPU): the reason this start compiles although the cache is not empty."""
        differing: set[str] = set()
        siblings = [
            sibling
            for root in (self.root, *self.read_only)
            for sibling in (root / kind).glob(f"{_safe(label)}-*")
        ]
        for sibling in siblings:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                other = json.loads((sibling / MANIFEST).read_text())["key"]
                differing.update(name for name in set(key) | set(other) if key.get(name) != other.get(name))
        if differing:
            log.warning(
                "cache: no %s entry for %s matches this start (cached entries differ in %s); "
                "building a fresh one",
                kind,
                label,
                ", ".join(sorted(differing)),
            )

    def _kind_dirs(self) -> Iterator[Path]:
        with contextlib.suppress(OSError):
            yield from (p for p in self.root.iterdir() if p.is_dir())

    def _entry_dirs(self) -> Iterator[Path]:
        for kind_dir in self._kind_dirs():
            with contextlib.suppress(OSError):
                yield from (p for p in kind_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def remove(self, path: Path) -> bool:
        """Remove an entry; False when it was gone already (another process removed it first)."""
        # Renamed away first, so a concurrent reader never sees a half-deleted entry.
        try:
            trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=path.parent))
        except OSError:
            return False
        try:
            os.rename(path, trash / path.name)
        except OSError:
            return False
        finally:
            shutil.rmtree(trash, ignore_errors=True)
        return True


def _verified(path: Path, kind: str, key: Key, *, check_digests: bool = True) -> Entry:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        if path.exists():
            raise EntryProblem("corrupt: no manifest") from None
        raise
    except (ValueError, UnicodeDecodeError):
        raise EntryProblem("corrupt: unreadable manifest") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise EntryProblem("corrupt: unknown manifest format")
    stored = manifest.get("key")
    if manifest.get("kind") != kind or not isinstance(stored, dict) or stored != dict(key):
        stored = stored if isinstance(stored, dict) else {}
        fields = sorted(n for n in set(key) | set(stored) if key.get(n) != stored.get(n))
        raise EntryProblem(f"mismatch: written for another {', '.join(fields) or 'kind'}")
    payload = path / PAYLOAD
    listed: dict[str, list[Any]] = manifest["files"]
    present = payload_files(payload)
    if present != set(listed):
        missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
        raise EntryProblem(
            f"corrupt: files differ from the manifest (missing {missing[:3]}, extra {extra[:3]})"
        )
    for name, (size, digest) in listed.items():
        file = payload / name
        if file.stat().st_size != size:
            raise EntryProblem(f"corrupt: {name} has {file.stat().st_size} bytes, the manifest says {size}")
        if check_digests and file_digest(file) != digest:
            raise EntryProblem(f"corrupt: {name} does not match its SHA-256")
    return Entry(path, manifest)


def payload_files(directory: Path) -> set[str]:
    """The files a payload made from `directory` holds (relative paths): regular files, no locks."""
    return {
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and not p.name.endswith(".lock")
    }


def _manifest(kind: str, label: str, key: Key, payload: Path, now: float) -> dict[str, Any]:
    files = {}
    for name in sorted(payload_files(payload)):
        file = payload / name
        files[name] = [file.stat().st_size, file_digest(file)]
    return {
        "format": FORMAT,
        "kind": kind,
        "label": label,
        "key": dict(key),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "size": sum(size for size, _ in files.values()),
        "files": files,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with path.open("w") as stream:
        json.dump(data, stream, indent=1, sort_keys=True)
        stream.flush()
        os.fsync(stream.fileno())


def _copytree(source: str, target: str) -> None:
    # Skips sockets, lock files and other non-regular files some libraries leave in their caches.
    shutil.copytree(source, target, symlinks=False, ignore=_not_regular)


def _not_regular(directory: str, names: list[str]) -> list[str]:
    skip = []
    for name in names:
        path = Path(directory, name)
        if not (path.is_dir() or path.is_file()) or name.endswith(".lock"):
            skip.append(name)
    return skip


def _tree_size(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for file in path.rglob("*"):
            with contextlib.suppress(OSError):
                if file.is_file():
                    total += file.stat().st_size
    return total


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label).strip(".-") or "model"
