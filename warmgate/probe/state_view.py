"""What the entrypoint's state files say right now, read cheaply and defensively.

The kubelet probes several times a second across containers, so each file is parsed only when it
changed: an lstat is compared with the last one (inode, mtime, size; the writer renames a new file
into place, so every write changes the inode). Nothing here raises on bad input: a missing, stale,
half-written or garbage file becomes a snapshot that says why it does not count.

The state directory is shared with another container and treated as untrusted. A state file must
be a regular file in the directory itself: a FIFO (opening it would block the event loop, and so
every endpoint, until someone writes), a device (`/dev/zero` never ends), a directory, a socket or
a symlink is refused by its lstat before anything opens it, and the open itself uses O_NOFOLLOW
and O_NONBLOCK in case the file is swapped in between. A file is read with a size cap
(`STATUS_MAX_BYTES`, `READY_MAX_BYTES`); a larger one is refused from its size alone. The state
directory itself may be reached through a symlink (only the last path component is checked).
"""

from __future__ import annotations

import enum
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from warmgate.state import READY_FILE, STATUS_FILE, Phase, Report, Status, writer_alive

_DocT = TypeVar("_DocT", bound=BaseModel)
_Signature = tuple[int, int, int, int, int]

# status.json is a few hundred bytes; 1 MiB leaves room for a long message, and its parse on the
# event loop stays short (about 10 ms).
STATUS_MAX_BYTES = 1 << 20
# ready.json holds the full report: about 750 bytes per shape plus the load test (75 KB for 100
# shapes). 4 MiB fits about 5,500 shapes; parsing that much blocks the event loop for 80-170 ms,
# once per change of the file (measured; docs/reliability.md), which is why the cap is not higher.
READY_MAX_BYTES = 4 << 20
# Reasons go into probe bodies, pod conditions and log lines: one short line.
REASON_MAX_CHARS = 200


class StateFileError(Exception):
    """A state file exists but cannot be used; the message is a short reason."""


class Marker(str, enum.Enum):
    """What became of ready.json."""

    PRESENT = "present"  # the current instance's marker
    ABSENT = "absent"
    STALE = "stale"  # from an earlier container run (another instance id, or its writer is dead)
    UNREADABLE = "unreadable"  # half-written, garbage, or unreadable
    NO_STATUS = "no-status"  # cannot tell which instance is current


@dataclass(frozen=True)
class StateSnapshot:
    """One consistent look at the state directory."""

    status: Status | None
    # Why there is no usable status; None when status is set.
    status_error: str | None
    # True when there is no status because nothing was written yet (no file or no directory),
    # False when a file exists but is unreadable or corrupt.
    status_missing: bool
    marker: Marker
    # The current instance's ready marker (marker is PRESENT), else None.
    report: Report | None
    # Why the marker does not count; None when it does.
    marker_problem: str | None
    # The last marker seen for the current instance, kept after the entrypoint removes it on
    # drain so that /metrics still shows the evidence while the pod goes away.
    evidence: Report | None

    @property
    def phase(self) -> Phase | None:
        return self.status.phase if self.status is not None else None

    @property
    def instance_id(self) -> str | None:
        return self.status.instance_id if self.status is not None else None


class _CachedFile(Generic[_DocT]):
    """Parses one file again only when its lstat signature changes."""

    def __init__(self, path: Path, model: type[_DocT], max_bytes: int) -> None:
        self.path = path
        self.model = model
        self.max_bytes = max_bytes
        self._signature: _Signature | None = None
        self._value: _DocT | None = None
        self._error: str | None = None

    def read(self) -> tuple[_DocT | None, str | None, bool]:
        """(document, why not, whether the file is simply missing)."""
        try:
            # lstat, not stat: a symlink to /dev/zero must be seen as the symlink it is.
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._signature, self._value, self._error = None, None, None
            return None, f"{self.path.name} does not exist", True
        except OSError as exc:
            self._signature, self._value, self._error = None, None, None
            return None, shorten(f"{self.path.name}: cannot stat: {exc.strerror or exc}"), False
        signature = (st.st_mode, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            # A rename between the lstat and the read makes us parse the newer file under the
            # older signature: the next lstat differs again, so the cost is one extra parse.
            self._signature = signature
            try:
                self._value, self._error = self._parse(self._read_bytes(st)), None
            except StateFileError as exc:
                self._value, self._error = None, shorten(str(exc))
            except Exception as exc:  # whatever the bytes are, a probe answers; it never 500s
                self._value, self._error = None, shorten(f"{self.path.name}: {type(exc).__name__}: {exc}")
        return self._value, self._error, False

    def _read_bytes(self, st: os.stat_result) -> bytes:
        name = self.path.name
        _require_regular(name, st)
        if st.st_size > self.max_bytes:
            raise StateFileError(_too_large(name, st.st_size, self.max_bytes))
        try:
            # O_NOFOLLOW and O_NONBLOCK: the file may have been swapped for a symlink or a FIFO
            # since the lstat; neither may block or redirect the read.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StateFileError(f"{name}: cannot open: {exc.strerror or exc}") from None
        try:
            _require_regular(name, os.fstat(fd))
            # One byte more than allowed tells a file that grew past the cap since the lstat.
            chunks: list[bytes] = []
            remaining = self.max_bytes + 1
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
        except OSError as exc:
            raise StateFileError(f"{name}: cannot read: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        if len(raw) > self.max_bytes:
            raise StateFileError(_too_large(name, len(raw), self.max_bytes))
        return raw

    def _parse(self, raw: bytes) -> _DocT:
        try:
            return self.model.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            problem = f"{where}: {first['msg']}" if where else first["msg"]
            raise StateFileError(
                f"{self.path}: not a valid {self.model.__name__.lower()} document ({problem})"
            ) from None


def _require_regular(name: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise StateFileError(f"{name} is {_file_kind(st.st_mode)}, not a regular file")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a plain file")


def _too_large(name: str, size: int, limit: int) -> str:
    return f"{name} is too large ({size} bytes; the limit is {limit})"


class StateView:
    """Reads status.json and ready.json from the shared state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._status = _CachedFile(state_dir / STATUS_FILE, Status, STATUS_MAX_BYTES)
        self._ready = _CachedFile(state_dir / READY_FILE, Report, READY_MAX_BYTES)
        self._evidence: Report | None = None

    def snapshot(self) -> StateSnapshot:
        status, status_error, status_missing = self._status.read()
        marker, marker_error, marker_missing = self._ready.read()
        if status is None:
            if status_missing and not self.state_dir.is_dir():
                status_error = f"state directory {self.state_dir} does not exist yet"
            self._evidence = None
            return StateSnapshot(
                None, status_error, status_missing, Marker.NO_STATUS, None, "no status to compare with", None
            )

        report: Report | None = None
        if marker is not None and marker.instance_id == status.instance_id:
            if writer_alive(self.state_dir) is False:
                # Both files agree, but the entrypoint that wrote them is dead (killed before it
                # could clean up); the next run has not replaced them yet.
                state = Marker.STALE
                problem = (
                    f"the entrypoint that wrote the ready marker (instance {marker.instance_id}) is gone"
                )
            else:
                state, report, problem = Marker.PRESENT, marker, None
        elif marker is not None:
            state = Marker.STALE
            problem = (
                f"ready marker is from an earlier run (instance {marker.instance_id}, "
                f"current {status.instance_id})"
            )
        elif marker_missing:
            state, problem = Marker.ABSENT, "no ready marker yet"
        else:
            state, problem = Marker.UNREADABLE, f"ready marker unusable: {marker_error}"

        if report is not None:
            self._evidence = report
        elif self._evidence is not None and self._evidence.instance_id != status.instance_id:
            self._evidence = None
        return StateSnapshot(status, None, False, state, report, problem, self._evidence)


def shorten(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """One line of at most `limit` characters."""
    if len(text) > limit:
        # Cut before joining lines so that a huge text costs no more than `limit` characters.
        text = text[: limit - 3] + "..."
    return " ".join(text.splitlines())
