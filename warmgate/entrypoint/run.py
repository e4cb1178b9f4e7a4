"""`warmgate run`: the container ENTRYPOINT.

start the server -> wait until healthy -> prove it (warmup, load test, gate) -> write the ready
marker -> supervise until TERM -> drain (readiness fails first, quiet period) -> stop the server.

Nothing here exits the process: `run` returns the exit code and the CLI exits once.

The server is either started here, or adopted when `warmgate run` spawned it before loading its
config (spawnfirst.py). Over 400 lines for that reason: both starts and the lifecycle they lead
into read top to bottom in one place, where the fail-closed path can see all of them.

Fail closed: whatever escapes the lifecycle takes one path, `failclosed.fail_closed` (one log
line, marker first, `failed`, the server's group stopped and reaped, exit 83; 82 for the state
directory). `run` itself catches what even that path lets escape and SIGKILLs the group. Signal
exits keep their meaning: KeyboardInterrupt and cancellation still propagate, after the server is
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from warmgate import exitcodes
from warmgate.config import Config
from warmgate.entrypoint.diagnosis import Listener, StartupDiagnosis, listeners_before_spawn
from warmgate.entrypoint.engine.connections import client_session
from warmgate.entrypoint.failclosed import (
    describe_failure,
    fail_closed,
    log_loop_error,
    record_best_effort,
    stop_or_kill,
)
from warmgate.entrypoint.spawn import (
    SpawnError,
    become_subreaper,
    block_handled_signals,
    server_environment,
    unblock_handled_signals,
)
from warmgate.entrypoint.supervisor import ServerProcess, Supervisor, describe_exit, kill_group_now
from warmgate.protocols import make_adapter
from warmgate.protocols.health import ServerNeverHealthy, wait_until_healthy
from warmgate.state import Phase, Report, StateError, StateWriter

if TYPE_CHECKING:
    from warmgate.entrypoint.spawnfirst import EarlyServer

log = logging.getLogger("warmgate.run")

# How often the wait for health logs progress, so a long model load is visibly alive.
HEALTH_LOG_INTERVAL_S = 10.0
# The health wait gets at least this long, even when loading warmgate itself took the whole start
# timeout: the server may be ready by then, and one poll says so.
MIN_HEALTH_WAIT_S = 0.1


class WarmgateFailure(Exception):
    """Raised into the fail-closed path for a failure that is not itself an exception here (a
    supervisor task that died)."""


@dataclass
class RunContext:
    """What the gate needs, built once in `run` and passed down."""

    config: Config
    state: StateWriter
    session: aiohttp.ClientSession
    server: ServerProcess
    clock: Callable[[], float] = time.monotonic
    # Phase name -> seconds, filled as the run goes; copied into the report.
    phases: dict[str, float] = field(default_factory=dict)
    # The listeners on the configured port before the server existed (None: cannot tell).
    listeners_before_spawn: list[Listener] | None = None
    # clock() when the server was spawned: its load (waiting-for-server) is timed from there, also
    # when warmgate spawned it before loading its own config.
    server_started: float | None = None


@dataclass
class Spawned:
    """The server once it exists, for `run`'s last resort when the async path itself failed."""

    server: ServerProcess | None = None


class Prover(Protocol):
    """Warms the server, load-tests it, and evaluates the gate."""

    async def prepare(self) -> None:
        """Work that needs no server (building payloads), run while the server loads."""

    async def prove(self) -> Report:
        """Runs once the server is healthy; returns the report with its verdict."""


ProverFactory = Callable[[RunContext], Prover]


def default_prover() -> ProverFactory:
    def build(ctx: RunContext) -> Prover:
        # Imported when the server is already starting (spawn first): the engine pulls in numpy.
        from warmgate.entrypoint.engine.prover import ProofSetup, make_prover

        return make_prover(
            ProofSetup(
                config=ctx.config,
                session=ctx.session,
                state=ctx.state,
                phases=ctx.phases,
                server_pid=ctx.server.pid,
                server_exited=ctx.server.exited,
            )
        )

    return build


def run(
    config: Config,
    server_command: Sequence[str],
    *,
    once: bool,
    prover: ProverFactory | None = None,
    early: EarlyServer | None = None,
) -> int:
    """`early`: the server, already started from `server_command` (spawn first); else run
    starts it."""
    spawned = Spawned()
    try:
        return asyncio.run(
            run_async(
                config,
                server_command,
                once=once,
                prover=prover or default_prover(),
                spawned=spawned,
                early=early,
            )
        )
    except Exception as exc:
        # run_async fails closed by itself; this is for when that path, or asyncio's own
        # teardown, failed too: no orderly stop is left, only SIGKILL.
        log.error("warmgate failed: %s", describe_failure(exc))
        log.debug("the failure's traceback", exc_info=exc)
        if spawned.server is not None and spawned.server.running:
            kill_group_now(spawned.server)
        return exitcodes.WARMGATE_FAILED
    except BaseException:
        if spawned.server is not None and spawned.server.running:
            kill_group_now(spawned.server)
        raise


async def run_async(
    config: Config,
    server_command: Sequence[str],
    *,
    once: bool,
    prover: ProverFactory,
    spawned: Spawned | None = None,
    early: EarlyServer | None = None,
) -> int:
    spawned = spawned or Spawned()
    asyncio.get_running_loop().set_exception_handler(log_loop_error)
    state: StateWriter | None = None
    supervisor: Supervisor | None = None
    try:
        if early is not None:
            # Adopted first, so every failure below stops it (its signals are blocked since the
            # spawn, pending until the supervisor handles them).
            server = spawned.server = ServerProcess(early.pid)
            supervisor = Supervisor(server, reap_any=early.reap_any)
            supervisor.install()
            log.info(
                "started server (pid %d) before loading the config: %s", early.pid, " ".join(server_command)
            )
        health_url = make_adapter(config.server).health_url
        state = StateWriter(
            config.state_dir,
            server_url=config.server.url,
            health_url=health_url,
            instance_id=None if early is None else early.instance_id,
        )
        if early is not None:
            early.release_state_lock()
        try:
            state.prepare()
        except StateError as exc:
            log.error("%s", exc)
            if supervisor is not None:
                await supervisor.stop_server(supervisor.shutdown_signal, config.drain.grace_period_s)
            return exitcodes.STATE_DIR_UNUSABLE

        if early is not None:
            before_spawn = early.listeners_on(config.server.url)
            server_started = early.spawned_at
        else:
            reap_any = os.getpid() == 1 or become_subreaper()
            before_spawn = listeners_before_spawn(config.server)
            log.info("starting server: %s", " ".join(server_command))
            # Held from here until the supervisor handles them: a TERM in between must not kill
            # us and leave the server behind.
            block_handled_signals()
            try:
                server = ServerProcess.spawn(server_command, server_environment(os.environ))
            except SpawnError as exc:
                unblock_handled_signals()
                log.error("%s", exc)
                record_best_effort(state, Phase.FAILED, str(exc))
                return exc.exit_code
            server_started = time.monotonic()
            spawned.server = server
            supervisor = Supervisor(server, reap_any=reap_any)
            supervisor.install()
        assert supervisor is not None
        async with client_session(config) as session:
            ctx = RunContext(
                config=config,
                state=state,
                session=session,
                server=server,
                listeners_before_spawn=before_spawn,
                server_started=server_started,
            )
            return await _lifecycle(ctx, supervisor, prover, once=once)
    except Exception as exc:
        return await fail_closed(exc, config, state, supervisor)
    except BaseException:
        # KeyboardInterrupt, SystemExit, cancellation: they keep their meaning (the CLI's exit
        # code), but not before the server is stopped.
        if supervisor is not None:
            await stop_or_kill(supervisor, config.drain.grace_period_s)
        raise
    finally:
        if supervisor is not None:
            await supervisor.close()


async def _lifecycle(ctx: RunContext, supervisor: Supervisor, prover: ProverFactory, *, once: bool) -> int:
    config, state, server = ctx.config, ctx.state, ctx.server
    grace = config.drain.grace_period_s

    gate_task = asyncio.create_task(_prove(ctx, prover), name="gate")
    try:
        outcome = await _first_of(gate_task, server.exited, supervisor.shutdown_requested, supervisor.failed)
    finally:
        if not gate_task.done():
            gate_task.cancel()
            with contextlib.suppress(BaseException):
                await gate_task

    if outcome is supervisor.failed:
        raise _supervisor_failure(supervisor)
    if outcome is not gate_task:
        if gate_task.done() and not gate_task.cancelled() and gate_task.exception() is not None:
            log.debug("the gate's own failure, superseded", exc_info=gate_task.exception())
        if outcome is server.exited:
            assert server.exit_code is not None
            message = f"server exited during {state.status.phase.value}: {describe_exit(server.exit_code)}"
            log.error("%s", message)
            record_best_effort(state, Phase.FAILED, message)
            await supervisor.stop_server(supervisor.shutdown_signal, grace)
            return server.exit_code
        # Shutdown before the gate decided: nothing is ready, so there is nothing to drain.
        record_best_effort(state, Phase.DRAINING, "shutdown requested before ready")
        code = await supervisor.stop_server(supervisor.shutdown_signal, grace)
        record_best_effort(state, Phase.STOPPED, f"server {describe_exit(code)}")
        return code

    try:
        report = gate_task.result()
    except ServerNeverHealthy as exc:
        log.error("%s", exc)
        record_best_effort(state, Phase.FAILED, str(exc))
        await supervisor.stop_server(supervisor.shutdown_signal, grace)
        return exitcodes.SERVER_NEVER_HEALTHY

    if report.gate.passed:
        # Status first, marker last: the marker is the commit point readiness keys on, so a reader
        # that sees it also sees `ready` (the other order showed a marker beside a stale phase).
        # A marker that cannot be written fails closed, and `failed` replaces `ready`.
        state.set_phase(Phase.READY, report.gate.reason)
        try:
            state.write_ready(report)
        except OSError as exc:
            raise StateError(f"cannot write {state.ready_path}: {exc.strerror or exc}") from None
        log.info("gate passed: ready (%s)", report.gate.reason)
    else:
        message = f"gate failed: {report.gate.reason}"
        log.error("%s", message)
        record_best_effort(state, Phase.FAILED, message)
        if once or config.policy.on_failure != "stay-unready":
            await supervisor.stop_server(supervisor.shutdown_signal, grace)
            return exitcodes.GATE_FAILED
        log.warning("policy stay-unready: serving without the ready marker")

    if once:
        await supervisor.stop_server(supervisor.shutdown_signal, grace)
        return exitcodes.OK

    outcome = await _first_of(server.exited, supervisor.shutdown_requested, supervisor.failed)
    if outcome is supervisor.failed:
        raise _supervisor_failure(supervisor)
    if outcome is server.exited:
        assert server.exit_code is not None
        message = f"server exited: {describe_exit(server.exit_code)}"
        log.error("%s", message)
        record_best_effort(state, Phase.FAILED, message)
        await supervisor.stop_server(supervisor.shutdown_signal, grace)
        return server.exit_code
    return await _drain(ctx, supervisor)


def _supervisor_failure(supervisor: Supervisor) -> Exception:
    failure = supervisor.failure
    if isinstance(failure, Exception):
        return failure
    return WarmgateFailure(f"signal handling stopped: {failure!r}")


async def _drain(ctx: RunContext, supervisor: Supervisor) -> int:
    """Readiness fails first (marker removed, then status draining), the quiet period lets
    endpoints and load balancers notice, then the server is signalled. A second signal skips the
    quiet period, a third the server's grace period. A state directory that fails here (a full
    disk) does not stop the drain: it ends as usual, then exits 82."""
    state, drain = ctx.state, ctx.config.drain
    quiet = f"quiet period {drain.quiet_period_s:g}s before stopping the server"
    failure = record_best_effort(state, Phase.DRAINING, quiet)
    log.info("draining: readiness fails now; stopping the server in %gs", drain.quiet_period_s)
    await supervisor.wait_exit_or_escalation(drain.quiet_period_s)
    # A second signal ended the quiet period; only a further one skips the server's grace period.
    supervisor.consume_escalation()
    code = await supervisor.stop_server(supervisor.shutdown_signal, drain.grace_period_s)
    failure = record_best_effort(state, Phase.STOPPED, f"server {describe_exit(code)}") or failure
    if failure is not None:
        log.error("drained and stopped the server (%s), but the state directory failed", describe_exit(code))
        return exitcodes.STATE_DIR_UNUSABLE
    return code


async def _prove(ctx: RunContext, make_prover: ProverFactory) -> Report:
    state, config = ctx.state, ctx.config
    protocol = make_adapter(config.server)
    state.set_phase(Phase.WAITING_FOR_SERVER, f"polling {protocol.health_url}")
    started = ctx.clock() if ctx.server_started is None else ctx.server_started
    last_log = started
    message_write_failed = False

    def on_poll(polls: int, reason: str | None) -> None:
        nonlocal last_log, message_write_failed
        now = ctx.clock()
        if reason is not None and now - last_log >= HEALTH_LOG_INTERVAL_S:
            last_log = now
            log.info("waiting for server: %.0fs, %d polls, last: %s", now - started, polls, reason)
            try:
                state.update(message=reason)
            except StateError as exc:
                # For people watching, like progress: the next phase change will fail if the
                # directory is still broken.
                if not message_write_failed:
                    log.warning("%s: the wait is not recorded until the next phase", exc)
                message_write_failed = True

    diagnosis = StartupDiagnosis(
        config.server, protocol, ctx.session, ctx.server.pid, ctx.listeners_before_spawn
    )
    prover = make_prover(ctx)
    # Payloads are built while the server loads: after it is healthy they would be start-up
    # latency added to every pod.
    preparing = asyncio.create_task(prover.prepare(), name="prepare")
    try:
        await wait_until_healthy(
            functools.partial(protocol.check_ready, ctx.session),
            # The start timeout counts from the spawn (at least one poll's worth is left).
            max(config.server.start_timeout_s - (ctx.clock() - started), MIN_HEALTH_WAIT_S),
            clock=ctx.clock,
            on_poll=on_poll,
            diagnose=diagnosis,
        )
        ctx.phases[Phase.WAITING_FOR_SERVER.value] = ctx.clock() - started
        log.info("server healthy after %.2fs", ctx.phases[Phase.WAITING_FOR_SERVER.value])
        await preparing
    finally:
        if not preparing.done():
            preparing.cancel()
        with contextlib.suppress(BaseException):
            # Retrieved, so a failure superseded by another is never reported as "never retrieved".
            await preparing
        # The wait's own transport (a gRPC channel); the engine's adapter has its own.
        await protocol.aclose()
    return await prover.prove()


async def _first_of(*waitables: asyncio.Task[Report] | asyncio.Event) -> asyncio.Task[Report] | asyncio.Event:
    """Wait until the first task finishes or event is set; return which one."""
    tasks: dict[asyncio.Future[Any], asyncio.Task[Report] | asyncio.Event] = {}
    for item in waitables:
        future: asyncio.Future[Any] = (
            asyncio.ensure_future(item.wait()) if isinstance(item, asyncio.Event) else item
        )
        tasks[future] = item
    done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for future, item in tasks.items():
        if isinstance(item, asyncio.Event):
            future.cancel()
    # Prefer the server's exit over the other outcomes when both happened at once.
    for item in waitables:
        if isinstance(item, asyncio.Event) and item.is_set():
            return item
    return tasks[next(iter(done))]
