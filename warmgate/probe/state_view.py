"""What the entrypoint's state files say right now, read cheaply and defensively.

The kubelet probes several times a second across containers, so each file is parsed only when it
changed: an lstat is compared with the last one (inode, mtime, size; the writer renames a new file
into place, so every write changes the inode). Nothing here raises on bad input: a missing, stale,
half-written or garbage file becomes a snapshot that says why it does not count.

The state directory is shared with another container and treated as untrusted: each file is read
by `warmgate.state.read_document`, which refuses anything but a regular file in the directory itself
(a FIFO would block the event loop, and so every endpoint; `/dev/zero` never ends; a symlink may
point at either) and caps the size (`STATUS_MAX_BYTES`, `READY_MAX_BYTES`). The state directory
itself may be reached through a symlink (only the last path component is checked).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from warmgate.state import (
    READY_FILE,
    READY_MAX_BYTES,
    STATUS_FILE,
    STATUS_MAX_BYTES,
    Phase,
    Report,
    StateReadError,
    Status,
    read_document,
    writer_alive,
)

_DocT = TypeVar("_DocT")
_Signature = tuple[int, int, int, int, int]

# Reasons go into probe bodies, pod conditions and log lines: one short line.
REASON_MAX_CHARS = 200


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
                self._value, self._error = (
                    read_document(self.path, self.model, self.max_bytes, known=st),
                    None,
                )
            except StateReadError as exc:
                self._value, self._error = None, shorten(str(exc))
            except Exception as exc:  # whatever the bytes are, a probe answers; it never 500s
                self._value, self._error = None, shorten(f"{self.path.name}: {type(exc).__name__}: {exc}")
        return self._value, self._error, False


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
