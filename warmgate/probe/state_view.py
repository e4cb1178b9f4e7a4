"""What the entrypoint's state files say right now, read cheaply and defensively.

The kubelet probes several times a second across containers, so each file is parsed only when it
changed: a stat is compared with the last one (inode, mtime, size; the writer renames a new file
into place, so every write changes the inode). Nothing here raises on bad input: a missing, stale,
half-written or garbage file becomes a snapshot that says why it does not count.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

from warmgate.state import (
    READY_FILE,
    STATUS_FILE,
    Phase,
    Report,
    StateReadError,
    Status,
    read_report,
    read_status,
    writer_alive,
)

_DocT = TypeVar("_DocT", bound=BaseModel)
_Signature = tuple[int, int, int, int]


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
    """Parses one file again only when its stat signature changes."""

    def __init__(self, path: Path, reader: Callable[[Path], _DocT]) -> None:
        self.path = path
        self.reader = reader
        self._signature: _Signature | None = None
        self._value: _DocT | None = None
        self._error: str | None = None

    def read(self) -> tuple[_DocT | None, str | None, bool]:
        """(document, why not, whether the file is simply missing)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._signature, self._value, self._error = None, None, None
            return None, f"{self.path.name} does not exist", True
        except OSError as exc:
            self._signature, self._value, self._error = None, None, None
            return None, f"{self.path.name}: cannot stat: {exc.strerror or exc}", False
        signature = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            # A rename between the stat and the read makes us parse the newer file under the
            # older signature: the next stat differs again, so the cost is one extra parse.
            self._signature = signature
            try:
                self._value, self._error = self.reader(self.path), None
            except StateReadError as exc:
                self._value, self._error = None, _short(str(exc))
            except Exception as exc:  # whatever the bytes are, a probe answers; it never 500s
                self._value, self._error = None, _short(f"{self.path.name}: {type(exc).__name__}: {exc}")
        return self._value, self._error, False


class StateView:
    """Reads status.json and ready.json from the shared state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._status: _CachedFile[Status] = _CachedFile(state_dir / STATUS_FILE, _read_status_at)
        self._ready: _CachedFile[Report] = _CachedFile(state_dir / READY_FILE, read_report)
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


def _read_status_at(path: Path) -> Status:
    return read_status(path.parent)


def _short(text: str, limit: int = 200) -> str:
    # Reasons go into probe bodies and log lines: keep them to one short line.
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
