"""The three probe verdicts, decided from the state files and the probe's own server checks.

- startup: the current instance's ready marker exists.
- readiness: the marker exists, the instance is not draining, and the model server's own health
  endpoint answers (cached, single-flight check).
- liveness: the model server's liveness endpoint answers; `live_failures` consecutive failed checks
  are tolerated. Not judged before the server is up or while it drains: the entrypoint's start
  timeout and drain deadline own those phases, and a liveness restart there would only add noise.

Each verdict logs one line when it changes, never one per probe.

Everything a verdict carries comes from untrusted places (the state files, the model server's
answers, client errors that quote the server URL), and it is served in bodies, sent as pod
condition messages and logged. So a verdict's reason is redacted (no user:password in URLs) and
cut to one short line when the verdict is made, and the body cuts every string it echoes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from warmgate.probe.server_check import CachedCheck
from warmgate.probe.state_view import Marker, StateSnapshot, StateView, shorten
from warmgate.redact import redact_urls
from warmgate.state import Phase

log = logging.getLogger("warmgate.probe")

# Phases in which liveness is not judged (see the module docstring).
_LIVENESS_NOT_JUDGED = frozenset({Phase.STARTING, Phase.WAITING_FOR_SERVER, Phase.DRAINING, Phase.STOPPED})
_DRAINING = frozenset({Phase.DRAINING, Phase.STOPPED})
# How much of the entrypoint's own strings a body echoes: enough for a person with curl, never a
# 100 MB message in every probe response.
MESSAGE_MAX_CHARS = 1000
# Longer than a pod condition message (256), which the readiness gate cuts itself.
FIELD_MAX_CHARS = 400


def clean(text: str, limit: int = FIELD_MAX_CHARS) -> str:
    """Safe to serve and log: credentials in URLs redacted, then cut to one line of `limit`."""
    # Cut generously before redacting so that a huge text costs little, and redact before the
    # final cut so that it cannot split a URL between its password and its "@". The first cut
    # may split one, so the word it cut through is dropped: it is never shown unredacted.
    head = text[: limit * 4]
    if len(head) < len(text):
        rest, _, last_word = head.rpartition(" ")
        if "://" in last_word:
            head = rest + " ..."
    return shorten(redact_urls(head), limit)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    # Short and stable (logged on change, mapped to pod-condition reasons): ready, not-ready,
    # no-state, stale-marker, draining, server-unhealthy, alive, server-dead, shutting-down, ...
    code: str
    reason: str
    snapshot: StateSnapshot | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Every consumer (body, log line, pod condition) gets the safe form.
        object.__setattr__(self, "reason", clean(self.reason))

    def body(self) -> dict[str, Any]:
        """The JSON operators read with curl; the kubelet only looks at the status code."""
        body: dict[str, Any] = {"ok": self.ok, "code": self.code, "reason": self.reason}
        status = self.snapshot.status if self.snapshot is not None else None
        if status is not None:
            body["phase"] = status.phase.value
            body["instance_id"] = clean(status.instance_id)
            progress = status.progress
            body["progress"] = (
                {"done": progress.done, "total": progress.total, "detail": clean(progress.detail)}
                if progress is not None
                else None
            )
            if status.message:
                body["message"] = clean(status.message, MESSAGE_MAX_CHARS)
        return body


class Evaluator:
    def __init__(
        self,
        view: StateView,
        ready_check: CachedCheck,
        live_check: CachedCheck,
        *,
        live_failures: int,
    ) -> None:
        self.view = view
        self.ready_check = ready_check
        self.live_check = live_check
        self.live_failures = live_failures
        self.shutting_down = False
        self.last_readiness: Verdict | None = None
        self._logged: dict[str, tuple[bool, str]] = {}
        self._logged_phase: tuple[str | None, Phase | None] | None = None

    def begin_shutdown(self) -> None:
        """From now on every endpoint answers 503."""
        self.shutting_down = True

    def snapshot(self) -> StateSnapshot:
        snapshot = self.view.snapshot()
        key = (snapshot.instance_id, snapshot.phase)
        if key != self._logged_phase:
            self._logged_phase = key
            if snapshot.status is None:
                log.info("no usable state: %s", clean(snapshot.status_error or ""))
            else:
                instance, phase = clean(snapshot.status.instance_id), snapshot.status.phase.value
                log.info("instance %s: phase %s", instance, phase)
        return snapshot

    def startup(self) -> Verdict:
        return self._note("startup", self._startup())

    async def readiness(self) -> Verdict:
        verdict = self._note("readiness", await self._readiness())
        self.last_readiness = verdict
        return verdict

    async def liveness(self) -> Verdict:
        return self._note("liveness", await self._liveness())

    def _startup(self) -> Verdict:
        if self.shutting_down:
            return _shutting_down()
        snapshot = self.snapshot()
        if snapshot.status is None:
            return Verdict(False, "no-state", snapshot.status_error or "no status", snapshot)
        if snapshot.report is not None:
            return Verdict(True, "started", "ready marker present", snapshot)
        return _not_ready(snapshot)

    async def _readiness(self) -> Verdict:
        if self.shutting_down:
            return _shutting_down()
        snapshot = self.snapshot()
        if snapshot.status is None:
            return Verdict(False, "no-state", snapshot.status_error or "no status", snapshot)
        # Before the marker: the entrypoint removes the marker after announcing the drain, and a
        # reader between the two writes must already see "draining".
        if snapshot.status.phase in _DRAINING:
            return Verdict(False, "draining", f"instance is {snapshot.status.phase.value}", snapshot)
        if snapshot.report is None:
            return _not_ready(snapshot)
        result = await self.ready_check.result()
        if not result.healthy:
            return Verdict(False, "server-unhealthy", f"model server not ready: {result.reason}", snapshot)
        return Verdict(True, "ready", "ready marker present and model server healthy", snapshot)

    async def _liveness(self) -> Verdict:
        if self.shutting_down:
            return _shutting_down()
        snapshot = self.snapshot()
        if snapshot.status is None and snapshot.status_missing:
            return Verdict(True, "not-judged", f"no state yet ({snapshot.status_error})", snapshot)
        if snapshot.status is not None and snapshot.status.phase in _LIVENESS_NOT_JUDGED:
            phase = snapshot.status.phase.value
            return Verdict(True, "not-judged", f"liveness is not judged in phase {phase}", snapshot)
        result = await self.live_check.result()
        failures = self.live_check.consecutive_failures
        if result.healthy:
            return Verdict(True, "alive", "model server alive", snapshot)
        if failures < self.live_failures:
            reason = f"tolerating failure {failures} of {self.live_failures}: {result.reason}"
            return Verdict(True, "alive-failing", reason, snapshot)
        reason = f"model server not alive: {failures} consecutive failed checks; last: {result.reason}"
        return Verdict(False, "server-dead", reason, snapshot)

    def _note(self, kind: str, verdict: Verdict) -> Verdict:
        key = (verdict.ok, verdict.code)
        if self._logged.get(kind) != key:
            self._logged[kind] = key
            log.info("%s: %s (%s: %s)", kind, "pass" if verdict.ok else "FAIL", verdict.code, verdict.reason)
        return verdict


def _not_ready(snapshot: StateSnapshot) -> Verdict:
    status = snapshot.status
    assert status is not None
    phase = status.phase
    if phase is Phase.FAILED:
        detail = status.message or "the entrypoint reported a failure"
        return Verdict(False, "failed", f"phase failed: {detail}", snapshot)
    if snapshot.marker is Marker.STALE:
        return Verdict(False, "stale-marker", snapshot.marker_problem or "stale ready marker", snapshot)
    if phase is Phase.READY:
        # Status says ready but the marker is missing or unreadable: trust only the marker.
        return Verdict(False, "no-marker", f"phase ready but {snapshot.marker_problem}", snapshot)
    progress = status.progress
    done = f" ({progress.done}/{progress.total})" if progress is not None and progress.total else ""
    return Verdict(False, "not-ready", f"phase {phase.value}{done}: {snapshot.marker_problem}", snapshot)


def _shutting_down() -> Verdict:
    return Verdict(False, "shutting-down", "probe is shutting down")
