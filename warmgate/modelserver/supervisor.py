"""Multi-worker mode: the parent forks N workers that each listen on the shared port(s).

The parent holds the HTTP port, and the gRPC port when there is one, bound but not listening for
its whole life, so that `--port 0` and `--grpc-port 0` resolve to one port each that every worker
then binds with SO_REUSEPORT (the HTTP socket here in Python, gRPC's own through its
grpc.so_reuseport option); the kernel spreads new connections over the listening sockets. The
parent never loads grpc (a gRPC core started before fork is unusable in the children). It prepares
what can be shared before fork (CPU weights, the optimised-model cache), forks the workers, prints
the ready line when all are warm, restarts a worker that dies after it was ready, and on TERM drains them all.
Signal handlers do nothing but wake the loop: the signal numbers arrive on the wakeup pipe and
the loop acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warmgate.modelserver import runtime as runtimes
from warmgate.modelserver import worker
from warmgate.modelserver.metrics import multiprocess_metrics, worker_exited
from warmgate.modelserver.options import ServeOptions
from warmgate.modelserver.runtime.base import ModelInfo, Runtime
from warmgate.modelserver.slots import ReadySlots
from warmgate.modelserver.sockets import GrpcListen, bind_socket, bound_port

log = logging.getLogger(__name__)

# A worker that dies this soon after being ready, this many times in a row, is not restarted again.
CRASH_WINDOW_S = 60.0
MAX_CRASHES = 5
# After the graceful timeout, how long workers get to exit before SIGKILL.
KILL_MARGIN_S = 5.0
_PR_SET_PDEATHSIG = 1
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
# Called once when every worker is ready: (port, gRPC port or None, device, providers).
Announce = Callable[[int, int | None, str, tuple[str, ...]], None]


@dataclass
class _Worker:
    index: int
    pid: int
    ready: bool = False


@dataclass
class _Supervisor:
    options: ServeOptions
    port: int
    grpc_listen: GrpcListen | None
    prepared: Runtime | None
    slots: ReadySlots
    ready_read: int
    ready_write: int
    wake_read: int
    announce: Announce
    # Where every worker writes its metrics, so that a scrape of any worker sees them all.
    metrics_dir: Path
    workers: dict[int, _Worker] = field(default_factory=dict)
    crashes: list[float] = field(default_factory=list)
    stopping: bool = False
    kill_at: float | None = None
    exit_code: int = worker.EXIT_OK
    announced: bool = False
    buffer: bytes = b""
    device: str = ""
    providers: tuple[str, ...] = ()

    def spawn(self, index: int) -> None:
        self.slots.set(index, False)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which ends in os._exit
            self._child(index)
        self.workers[pid] = _Worker(index, pid)
        log.info("started worker %d (pid %d)", index, pid)

    def _child(self, index: int) -> None:
        code = worker.EXIT_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            _die_with_parent()
            for fd in (self.ready_read, self.wake_read):
                os.close(fd)
            sock = bind_socket(self.options.host, self.port, reuse_port=True, listen=True)

            def announce(info: ModelInfo, grpc_port: int | None) -> None:
                # One write below PIPE_BUF is atomic: lines from several workers never interleave.
                line = {"pid": os.getpid(), "device": info.device, "providers": list(info.providers)}
                os.write(self.ready_write, json.dumps(line).encode() + b"\n")

            code = asyncio.run(
                worker.serve(
                    self.options,
                    sock,
                    announce,
                    grpc_listen=self.grpc_listen,
                    prepared=self.prepared,
                    all_workers_ready=self.slots.all_ready,
                    mark_ready=lambda ready: self.slots.set(index, ready),
                    metrics_dir=self.metrics_dir,
                )
            )
        except BaseException as exc:
            log.error("worker %d failed: %s: %s", index, type(exc).__name__, exc)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def run(self) -> int:
        for index in range(self.options.workers):
            self.spawn(index)
        while self.workers:
            timeout = None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())
            readable, _, _ = select.select([self.wake_read, self.ready_read], [], [], timeout)
            if self.wake_read in readable:
                for signum in os.read(self.wake_read, 64):
                    self.on_signal(signum)
            if self.ready_read in readable:
                self.on_ready_lines(os.read(self.ready_read, 4096))
            self.reap()
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.kill_all(signal.SIGKILL)
                self.kill_at = None
        return self.exit_code

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # reaped below
        if self.stopping:
            log.warning("second %s: killing workers", signal.Signals(signum).name)
            self.kill_all(signal.SIGKILL)
            return
        log.info("%s: draining %d workers", signal.Signals(signum).name, len(self.workers))
        self.stop(worker.EXIT_OK)

    def stop(self, code: int) -> None:
        self.stopping = True
        self.exit_code = code
        self.kill_all(signal.SIGTERM)
        self.kill_at = time.monotonic() + self.options.graceful_timeout_s + KILL_MARGIN_S

    def kill_all(self, signum: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def on_ready_lines(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            found = self.workers.get(message["pid"])
            if found is not None:
                found.ready = True
            self.device, self.providers = message["device"], tuple(message["providers"])
        if not self.announced and not self.stopping and self.slots.all_ready():
            self.announced = True
            grpc_port = None if self.grpc_listen is None else self.grpc_listen.port
            self.announce(self.port, grpc_port, self.device, self.providers)

    def reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            gone = self.workers.pop(pid, None)
            if gone is None:
                continue
            worker_exited(self.metrics_dir, pid)
            code = os.waitstatus_to_exitcode(status)
            self.slots.set(gone.index, False)
            if self.stopping:
                if code not in (0, -signal.SIGTERM) and self.exit_code == worker.EXIT_OK:
                    self.exit_code = worker.EXIT_FAILED
                continue
            self.on_unexpected_exit(gone, code)

    def on_unexpected_exit(self, gone: _Worker, code: int) -> None:
        if not gone.ready:
            # It never became ready: the model or the address is unusable, and so are the others.
            log.error(
                "worker %d (pid %d) exited with %d before it was ready; stopping", gone.index, gone.pid, code
            )
            self.stop(code if code > 0 else worker.EXIT_FAILED)
            return
        now = time.monotonic()
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
        if len(self.crashes) > MAX_CRASHES:
            log.error("workers crashed %d times in %.0fs; stopping", len(self.crashes), CRASH_WINDOW_S)
            self.stop(worker.EXIT_FAILED)
            return
        log.warning("worker %d (pid %d) exited with %d; restarting it", gone.index, gone.pid, code)
        self.spawn(gone.index)


def supervise(options: ServeOptions, announce: Announce) -> int:
    # Bound but never listening: keeps the port (and an ephemeral port's number) for the server's
    # whole life while workers come and go, without receiving connections itself.
    holder = bind_socket(options.host, options.port, reuse_port=True, listen=False)
    port = bound_port(holder)
    grpc_holder = grpc_listen = None
    if options.grpc_port is not None:
        grpc_holder = bind_socket(
            options.host, options.grpc_port, reuse_port=True, listen=False, scheme="grpc"
        )
        grpc_listen = GrpcListen(options.host, bound_port(grpc_holder), shared=True)
    prepared = runtimes.prepare(options.spec)
    slots = ReadySlots(options.workers)
    ready_read, ready_write = os.pipe()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    previous = {signum: signal.signal(signum, _record_only) for signum in _HANDLED}
    previous_wakeup = signal.set_wakeup_fd(wake_write)
    try:
        with multiprocess_metrics() as metrics_dir:
            supervisor = _Supervisor(
                options=options,
                port=port,
                grpc_listen=grpc_listen,
                prepared=prepared,
                slots=slots,
                ready_read=ready_read,
                ready_write=ready_write,
                wake_read=wake_read,
                announce=announce,
                metrics_dir=metrics_dir,
            )
            return supervisor.run()
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for fd in (ready_read, ready_write, wake_read, wake_write):
            os.close(fd)
        slots.close()
        holder.close()
        if grpc_holder is not None:
            grpc_holder.close()


def _record_only(signum: int, frame: object) -> None:
    """The wakeup fd already carries the signal number to the loop."""


def _die_with_parent() -> None:
    """Linux: TERM this worker if the supervisor dies without draining it (e.g. SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
