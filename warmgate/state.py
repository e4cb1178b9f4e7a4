"""The state files shared with the probe sidecar: status.json and ready.json.

Both are written atomically (temp file in the same directory, fsync, rename, fsync of the
directory) so a reader in the other container never sees half a file. The documents are typed
dataclasses so that the writer (entrypoint) and the readers (probe, `warmgate report`) cannot drift;
msgspec validates them both ways. Not pydantic: the probe sidecar reads these files, and pydantic
with the models would cost it about 10 MiB of its memory.

Over 400 lines on purpose: this file *is* the state-file contract (the documents, the writer, the
readers and the instance lock); split, a reader would have to hold several files to check it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import json
import logging
import numbers
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from warmgate.files import NotRegularFile, TooLarge, file_kind, os_problem, read_capped
from warmgate.redact import redact_urls

log = logging.getLogger("warmgate.state")

STATUS_FILE = "status.json"
READY_FILE = "ready.json"
# Held (flock, exclusive) by the running entrypoint for its whole life. The kernel drops the lock
# the instant that process dies, however it dies, so the sidecar can tell a live writer's files
# from ones left by an entrypoint that was killed before it could clean up (an OOM kill of the
# whole container, say): the files alone look identical in both cases until the next run starts.
LOCK_FILE = "instance.lock"
# A new entrypoint waits this long for the lock: the sidecar holds it shared for microseconds
# when it checks, and a second live entrypoint on the same directory is a misconfiguration.
LOCK_TIMEOUT_S = 5.0
SCHEMA_VERSION = 1


class Phase(str, enum.Enum):
    STARTING = "starting"
    WAITING_FOR_SERVER = "waiting-for-server"
    WARMING = "warming"
    LOAD_TESTING = "load-testing"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


# Every document is a keyword-only dataclass (required fields may follow defaulted ones). Readers
# accept fields they do not know (msgspec ignores them in a dataclass): an older probe must read a
# newer entrypoint's files.
@dataclass(kw_only=True)
class Progress:
    done: int = 0
    total: int = 0
    detail: str = ""


@dataclass(kw_only=True)
class Status:
    schema_version: int = SCHEMA_VERSION
    instance_id: str
    pid: int
    phase: Phase
    started_at: float
    phase_started_at: float
    updated_at: float
    progress: Progress | None = None
    server_url: str = ""
    health_url: str = ""
    message: str = ""
    attempt: int = 1


# ---- the ready marker's report -------------------------------------------------------------


@dataclass(kw_only=True)
class LatencyStats:
    """Percentiles over raw samples, in seconds."""

    count: int = 0
    mean_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None


@dataclass(kw_only=True)
class ConcurrencyCheckReport:
    """Answers under concurrent load compared with the answers given one request at a time."""

    variants: int = 0
    checked: int = 0
    matched: int = 0
    mismatches: int = 0
    # Largest |expected - got| over the floating-point outputs checked (0 when all were exact).
    max_abs_deviation: float | None = None
    # "request 17, output probs[3]: expected 0.25, got 0.75" (truncated); empty when all matched.
    first_mismatch: str = ""
    # Why the shape was not checked (opted out, protocol not comparable, no load test).
    skipped: str = ""


@dataclass(kw_only=True)
class PromptReport:
    """An LLM shape's prompt: the length asked for and the length the server counted."""

    target_tokens: int
    # The server's own count of the calibrated prompt (None when it could not count).
    achieved_tokens: int | None = None
    # How it counted: "tokenize" (its tokenize endpoint) or "usage" (usage.prompt_tokens); "" when
    # calibration failed and the prompt is an estimate (`note` says why).
    counted_by: str = ""
    calibration_requests: int = 0
    max_tokens: int = 0
    stream: bool = True
    chat: bool = True
    # Every request's prompt starts with words no other request of the run had, so prefix
    # caching cannot turn the load test into cache hits.
    unique: bool = True
    note: str = ""


@dataclass(kw_only=True)
class ShapeReport:
    """One shape's warmup and post-warm figures. For a prompt shape (`prompt` set) the latencies
    (first_s, steady, post_warm_s, post_warm_baseline) are times to first token."""

    name: str
    batch_size: int
    requests: int = 0
    errors: int = 0
    first_s: float | None = None
    steady: LatencyStats = field(default_factory=LatencyStats)
    first_to_steady_ratio: float | None = None
    post_warm_s: float | None = None
    post_warm_ratio: float | None = None
    # The serial requests the post-warm check sent after post_warm_s, each after the same idle
    # gap: post_warm_ratio is post_warm_s over their p50, and their spread sets the limit.
    post_warm_baseline: LatencyStats | None = None
    stable: bool | None = None
    payload_bytes: int | None = None
    # The first failure of this shape (status and start of the body, timeout, ...); empty when none.
    error: str = ""
    concurrency_check: ConcurrencyCheckReport | None = None
    prompt: PromptReport | None = None


@dataclass(kw_only=True)
class TokenStats:
    """What streamed completions measured under load: time to first token (TTFT), the gaps
    between streamed tokens (inter-token latency, ITL), and output tokens. A non-streamed shape
    has TTFT (its request latency) and output tokens, no ITL."""

    ttft: LatencyStats = field(default_factory=LatencyStats)
    itl: LatencyStats = field(default_factory=LatencyStats)
    output_tokens: int = 0
    # Output tokens of successful requests per second of the load test.
    output_tokens_per_s: float = 0.0


@dataclass(kw_only=True)
class QuantileInterval:
    """A percentile's estimate and its distribution-free confidence interval (order statistics),
    as early stopping last saw them; None where too few samples bound that side."""

    quantile: float
    count: int
    estimate_s: float
    lower_s: float | None = None
    upper_s: float | None = None
    slo_s: float | None = None


@dataclass(kw_only=True)
class LoadTestReport:
    mode: str
    duration_s: float
    concurrency: int | None = None
    target_rate: float | None = None
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    throughput_rps: float = 0.0
    latency: LatencyStats = field(default_factory=LatencyStats)
    per_shape: dict[str, LatencyStats] = field(default_factory=dict)
    per_shape_errors: dict[str, dict[str, int]] = field(default_factory=dict)
    # Prompt shapes only: over the streamed ones (what gate.ttft_p95_ms and itl_p95_ms judge),
    # and per prompt shape.
    tokens: TokenStats | None = None
    per_shape_tokens: dict[str, TokenStats] = field(default_factory=dict)
    # Why it ended: "duration", "converged" (early stopping) or "max_requests"; with early
    # stopping on, the intervals it last judged, by metric ("p95", "ttft_p95", ...).
    stopped: str | None = None
    intervals: dict[str, QuantileInterval] = field(default_factory=dict)


@dataclass(kw_only=True)
class GpuMemory:
    index: int
    name: str = ""
    peak_used_bytes: int
    total_bytes: int


@dataclass(kw_only=True)
class MemoryReport:
    # Sum over the server's process tree. RSS counts pages shared by forked workers once per
    # worker; PSS splits them, so it is what the gate compares with the limit when it is readable.
    peak_rss_bytes: int | None = None
    peak_pss_bytes: int | None = None
    samples: int = 0
    limit_bytes: int | None = None
    limit_source: str = ""
    headroom_fraction: float | None = None
    gpus: list[GpuMemory] = field(default_factory=list)

    @property
    def judged_peak_bytes(self) -> int | None:
        """The peak the gate compares with the limit (and the probe exports): PSS when it could
        be read, else RSS."""
        return self.peak_pss_bytes or self.peak_rss_bytes


@dataclass(kw_only=True)
class GateCheck:
    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str = ""


@dataclass(kw_only=True)
class GateVerdict:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    reason: str = ""
    # What the verdict did not judge, one line each (e.g. no latency SLO was set).
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Cause:
    """One kind of one-time cost the run saw (causes.py classifies them), in plain words."""

    # global_init | per_shape_compile | per_worker_init | allocator_growth | slow_under_concurrency
    # | outlier_length
    kind: str
    # The one-time cost in seconds where one figure says it (the first request's excess over
    # steady state); None for a cost that is a ratio (slow under concurrency).
    seconds: float | None = None
    # "shape bs4 2.1 s, bs8 0.9 s; others < 3x steady": the measurement behind the cause.
    evidence: str
    mitigation: str
    # "measured" (request timings alone), or "server trace" when the server's own start-up
    # trace confirms it.
    source: str = "measured"


@dataclass(kw_only=True)
class StartupStep:
    """One step of the server's own start-up trace (GET /v2/warmgate/startup)."""

    name: str
    seconds: float
    # Seconds from the server worker's start to the step's start, when the server says.
    started_s: float | None = None
    detail: str = ""


@dataclass(kw_only=True)
class WarmedShape:
    """A shape the run warmed, as the reference server labels the shapes it serves: the batch
    size and, per input in name order, its dims without the batch dimension ("4", "3x224x224",
    "128,128"); "" for a prompt shape."""

    batch_size: int
    dims: str = ""


@dataclass(kw_only=True)
class Diagnosis:
    """Why first requests were slow (causes), the server's start-up trace when it publishes one,
    and the shapes warmed (the probe compares traffic with them)."""

    causes: list[Cause] = field(default_factory=list)
    startup: list[StartupStep] = field(default_factory=list)
    # Where the start-up trace came from ("GET http://.../v2/warmgate/startup"), or "" if none.
    startup_source: str = ""
    # What could only be inferred, one line each (no trace, no worker ids).
    notes: list[str] = field(default_factory=list)
    warmed: list[WarmedShape] = field(default_factory=list)


@dataclass(kw_only=True)
class Report:
    """The full evidence: written as ready.json when the gate passes (and logged when it fails)."""

    schema_version: int = SCHEMA_VERSION
    instance_id: str
    created_at: float
    server_url: str
    protocol: str
    model: str
    attempts: int = 1
    # Phase name -> seconds spent in it (waiting-for-server, warming, load-testing, ...).
    phases: dict[str, float] = field(default_factory=dict)
    shapes: list[ShapeReport] = field(default_factory=list)
    load_test: LoadTestReport | None = None
    memory: MemoryReport | None = None
    gate: GateVerdict
    # Absent in reports written before the diagnosis existed.
    diagnosis: Diagnosis | None = None


# ---- writing and reading -------------------------------------------------------------------

_DocT = TypeVar("_DocT")


def _plain_number(value: object) -> object:
    # What pydantic used to coerce on construction: a numpy scalar (np.float64, np.int64) from the
    # statistics is written as the plain number it is. Anything else is a bug in the writer.
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"a state document cannot hold {type(value).__name__} ({value!r})")


def to_json_dict(document: Any) -> Any:
    """`document` (a Status, a Report, any part of one) as the JSON-ready dict the files hold:
    enums by value. It is validated on the way (a wrong type raises msgspec.ValidationError, a
    ValueError, naming the field), and an int in a float field is written as a float, so a file
    says `1.0` where the field is a float, as it always has."""
    plain = msgspec.to_builtins(document, enc_hook=_plain_number)
    return msgspec.to_builtins(msgspec.convert(plain, type=type(document)))


def from_builtins(model: type[_DocT], data: Any) -> _DocT:
    """A document from parsed JSON (dicts, lists, numbers), validated as the files are: unknown
    fields ignored, missing or mistyped ones a msgspec.ValidationError (a ValueError)."""
    return msgspec.convert(data, type=model)


class StateError(Exception):
    """The state directory cannot be used (startup error)."""


def atomic_write_json(path: Path, document: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one. Credentials in
    any URL it quotes (the server's, or one inside an error message) are redacted on the way."""
    data = (redact_urls(json.dumps(document, indent=2, sort_keys=True)) + "\n").encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; ignore filesystems that refuse.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_instance_id() -> str:
    return uuid.uuid4().hex


class StateWriter:
    """Owns the state directory for one container run (one instance id)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        server_url: str = "",
        health_url: str = "",
        clock: Callable[[], float] = time.time,
        instance_id: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.instance_id = instance_id or new_instance_id()
        self._lock_fd: int | None = None
        self._progress_write_failed = False
        now = clock()
        self.status = Status(
            instance_id=self.instance_id,
            pid=os.getpid(),
            phase=Phase.STARTING,
            started_at=now,
            phase_started_at=now,
            updated_at=now,
            server_url=server_url,
            health_url=health_url,
        )

    @property
    def status_path(self) -> Path:
        return self.state_dir / STATUS_FILE

    @property
    def ready_path(self) -> Path:
        return self.state_dir / READY_FILE

    def prepare(self, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        """Create the directory, prove it is writable, take the instance lock, and remove a stale
        marker from an earlier run."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock(lock_timeout_s)
            self.clear_ready()
            self._write_status()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StateError(f"state directory {self.state_dir} is not usable: {reason}") from None

    def _lock(self, timeout_s: float) -> None:
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StateError(
                        f"state directory {self.state_dir} is in use by another running warmgate "
                        f"({LOCK_FILE} is locked): give each model container its own state directory"
                    ) from None
                time.sleep(0.01)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                # A filesystem without flock: run without the lock; the sidecar then cannot tell
                # a dead writer's files apart (writer_alive answers None), as before this lock.
                os.close(fd)
                return
        self._lock_fd = fd

    def close(self) -> None:
        """Release the instance lock (process exit does the same)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear_ready(self) -> None:
        """Remove the marker. It never stays behind silently: a marker that cannot be removed is a
        StateError (the caller stops; the released instance lock then tells the sidecar not to
        trust it)."""
        try:
            self.ready_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(
                f"cannot remove the ready marker {self.ready_path}: {exc.strerror or exc}"
            ) from None

    def set_phase(self, phase: Phase, message: str = "", progress: Progress | None = None) -> None:
        """Enter `phase`. Every phase but ready removes the marker *first*, before anything that can
        fail (a full disk refuses the status write, never the unlink), so readiness is lost even
        when the status cannot say why."""
        if phase is not Phase.READY:
            self.clear_ready()
        now = self.clock()
        changes: dict[str, Any] = {"updated_at": now, "message": message, "progress": progress}
        if phase != self.status.phase:
            changes.update(phase=phase, phase_started_at=now)
        self.status = dataclasses.replace(self.status, **changes)
        self._write_status()

    def set_progress(self, done: int, total: int, detail: str = "") -> None:
        """Progress is for people watching; a full disk must not fail a warmup over it (the next
        phase change, or the marker itself, will tell). Warned once, not per request."""
        self.status = dataclasses.replace(
            self.status, updated_at=self.clock(), progress=Progress(done=done, total=total, detail=detail)
        )
        try:
            self._write_status()
        except StateError as exc:
            if not self._progress_write_failed:
                log.warning("%s: progress is not recorded until the next phase", exc)
            self._progress_write_failed = True

    def update(self, **changes: Any) -> None:
        self.status = dataclasses.replace(self.status, **{"updated_at": self.clock(), **changes})
        self._write_status()

    def write_ready(self, report: Report) -> None:
        atomic_write_json(self.ready_path, to_json_dict(report))

    def _write_status(self) -> None:
        try:
            atomic_write_json(self.status_path, to_json_dict(self.status))
        except OSError as exc:
            raise StateError(f"cannot write {self.status_path}: {exc.strerror or exc}") from None


def writer_alive(state_dir: Path) -> bool | None:
    """Is the entrypoint that owns `state_dir` still running? None when it cannot be told (no
    lock file: nothing started yet, or an entrypoint on a filesystem without flock)."""
    try:
        # Non-blocking, not following links: a FIFO planted as the lock file must not hang the probe.
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        # Closing the descriptor also drops the shared lock if we got it.
        os.close(fd)
    return False


class StateReadError(Exception):
    """A state file is missing, unreadable or not a valid document; the message says which."""


# What a reader accepts. status.json is a few hundred bytes; 1 MiB leaves room for a long message,
# and its parse in the sidecar's event loop stays short (about 10 ms).
STATUS_MAX_BYTES = 1 << 20
# ready.json holds the full report: about 750 bytes per shape plus the load test (75 KB for 100
# shapes). 4 MiB fits about 5,500 shapes; parsing that much blocks the sidecar's event loop for
# 80-170 ms, once per change of the file (measured; docs/reliability.md), so the cap is no higher.
READY_MAX_BYTES = 4 << 20


def read_status(state_dir: Path) -> Status:
    return read_document(state_dir / STATUS_FILE, Status, STATUS_MAX_BYTES)


def read_report(path: Path) -> Report:
    """A ready.json a person names (`warmgate report PATH`): a symlink to one is fine."""
    return read_document(path, Report, READY_MAX_BYTES, follow_symlinks=True)


def read_document(
    path: Path,
    model: type[_DocT],
    max_bytes: int,
    *,
    follow_symlinks: bool = False,
    known: os.stat_result | None = None,
) -> _DocT:
    """One state document, read as untrusted input: a regular file (a FIFO would block the read
    until someone writes, `/dev/zero` never ends), at most `max_bytes`, validated against `model`.
    Every problem is a StateReadError with a one-line reason. `known` is the caller's own lstat of
    `path` when it has one (the sidecar keeps it to notice changes).

    Without `follow_symlinks` the file must be in the directory itself: lstat refuses a symlink
    before anything opens it, and O_NOFOLLOW with O_NONBLOCK covers a file swapped in between."""
    name = path.name
    try:
        st = known or (os.stat(path) if follow_symlinks else os.lstat(path))
    except FileNotFoundError:
        raise StateReadError(f"{path} does not exist") from None
    except OSError as exc:
        raise StateReadError(f"{name}: cannot stat: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StateReadError(f"{name} is {file_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise StateReadError(_too_large(name, st.st_size, max_bytes))
    try:
        raw = read_capped(path, max_bytes, follow_symlinks=follow_symlinks)
    except NotRegularFile as exc:  # swapped in since the stat
        raise StateReadError(f"{name} is {exc.kind}, not a regular file") from None
    except TooLarge as exc:
        raise StateReadError(_too_large(name, exc.size, max_bytes)) from None
    except OSError as exc:
        raise StateReadError(f"{name}: cannot read: {os_problem(exc)}") from None
    try:
        return _decode(raw, model)
    except msgspec.ValidationError as exc:
        problem = _validation_problem(exc)
    except msgspec.DecodeError as exc:
        problem = f"Invalid JSON: {exc}"
    raise StateReadError(f"{path}: not a valid {model.__name__.lower()} document ({problem})")


def _decode(raw: bytes, model: type[_DocT]) -> _DocT:
    try:
        return msgspec.json.decode(raw, type=model)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError as exc:
        # json.dumps writes a non-finite float as NaN or Infinity, which strict JSON (msgspec)
        # refuses and the readers before msgspec accepted: such a file is still a valid document.
        if b"NaN" not in raw and b"Infinity" not in raw:
            raise
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise exc from None
        return msgspec.convert(data, type=model)


_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`")
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _validation_problem(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.shapes[0].batch_size`" as the one line the
    readers have always printed: "shapes.0.batch_size: Expected `int`, got `str`"."""
    message = str(exc)
    path = ""
    at = _AT.search(message)
    if at:
        message = message[: at.start()]
        path = at["path"]
    missing = _MISSING.fullmatch(message)
    if missing:
        path, message = f"{path}.{missing['name']}", "Field required"
    where = re.sub(r"\[(\d+)\]", r".\1", path).replace("[...]", ".*").lstrip(".")
    return f"{where}: {message}" if where else message


def _too_large(name: str, size: int, limit: int) -> str:
    return f"{name} is too large ({size} bytes; the limit is {limit})"
