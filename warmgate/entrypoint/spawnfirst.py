"""Spawn first: `warmgate run` starts the model server before it loads the rest of itself.

Importing the config models, asyncio, aiohttp and the protocols costs 0.5-2 s on a loaded node,
and every one of those seconds used to pass before the server even started. So `warmgate run`
reads only what spawning needs, starts the server, and validates everything else while the server
loads (commands.handle_run):

- the server command: after `--`, else `server.command` of the config file;
- the state directory (`WARMGATE_STATE_DIR`, else `state_dir`), to take the instance lock and
  remove an earlier run's ready marker before the server exists;
- the listening sockets, read now and judged once server.url is known (diagnosis.py);
- the environment (spawn.server_environment).

The subset is read strictly: whenever what is written is not plainly what the full validation
will read (a YAML error, a tag, a duplicate or merge key, a value of another type, an environment
value YAML would not read as a plain string, a lock another process holds, a spawn that fails),
`spawn_first` declines and `warmgate run` validates everything before it spawns, exactly as it
did before. After the full validation, `EarlyServer.disagreement` checks that both readings agree
(tests/entrypoint/test_spawn_first.py checks them on a corpus), and `warmgate run` fails closed if
they do not.

Only the standard library's cheapest modules and yaml's C parser are imported here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from warmgate.entrypoint.spawn import (
    SpawnError,
    become_subreaper,
    block_handled_signals,
    resolve_self,
    server_environment,
    spawn_process,
    stop_process_group,
    unblock_handled_signals,
)
from warmgate.files import read_capped

# Not typing.TYPE_CHECKING: importing typing costs milliseconds before the spawn (mypy reads a
# variable of this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import yaml

# The full config's own values (warmgate.config, warmgate.state, diagnosis.py), repeated here
# because importing those modules is exactly the cost spawning first avoids; a test keeps them equal.
DEFAULT_STATE_DIR = "/var/run/warmgate"
DEFAULT_SERVER_COMMAND = ("warmgate", "serve", "--demo")
MAX_CONFIG_BYTES = 256 * 1024
LOCK_FILE = "instance.lock"
READY_FILE = "ready.json"
STATUS_FILE = "status.json"
STATUS_SCHEMA_VERSION = 1
PROC_NET_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
STATE_DIR_VARIABLE = "WARMGATE_STATE_DIR"

# The sidecar holds the instance lock shared for microseconds when it checks it: a lock still
# held after this long belongs to another warmgate, and the full path reports that properly.
LOCK_WAIT_S = 0.02
LOCK_RETRY_S = 0.002

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# An environment value taken as a path without asking YAML more than its type: word characters,
# `/`, `.` and a few inner punctuation marks, starting with none of YAML's indicators.
_PLAIN_PATH = re.compile(r"[\w/.][\w/.+@=~-]*")


class Declined(Exception):
    """What spawning needs is not plainly readable: validate everything first."""


class SpawnPlan:
    """What the server needs before it can start, read without the config models. (Plain
    classes here, not dataclasses: importing dataclasses costs milliseconds of every start.)"""

    def __init__(self, command: tuple[str, ...], command_from_config: bool, state_dir: Path) -> None:
        self.command = command  # as written (`warmgate` not yet resolved to this installation)
        self.command_from_config = command_from_config
        self.state_dir = state_dir

    def __repr__(self) -> str:
        return f"SpawnPlan({self.command!r}, from_config={self.command_from_config}, {self.state_dir})"


class EarlyServer:
    """A server started before warmgate loaded its config; `warmgate run` adopts it."""

    def __init__(
        self,
        *,
        pid: int,
        instance_id: str,
        plan: SpawnPlan,
        argv: list[str],
        reap_any: bool,
        lock_fd: int | None,
        proc_tables: list[str] | None,
        spawned_at: float,
    ) -> None:
        self.pid = pid
        self.instance_id = instance_id
        self.plan = plan
        self.argv = argv
        self.reap_any = reap_any
        self.lock_fd = lock_fd
        # /proc/net/tcp and tcp6 as they were just before the spawn (None: unreadable).
        self.proc_tables = proc_tables
        # time.monotonic() right after the spawn: the server's load is timed from here.
        self.spawned_at = spawned_at

    def release_state_lock(self) -> None:
        """Hand the instance lock over: StateWriter takes its own (two open files of one lock
        file conflict under flock even within one process), so this one closes just before."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def disagreement(self, state_dir: Path, command: Sequence[str]) -> str | None:
        """None when the full validation read what spawning used; else what differs."""
        if state_dir != self.plan.state_dir:
            return f"state_dir {state_dir} (validated) != {self.plan.state_dir} (read before the spawn)"
        if self.plan.command_from_config and tuple(command) != self.plan.command:
            early = list(self.plan.command)
            return f"server.command {list(command)} (validated) != {early} (read before the spawn)"
        return None

    def listeners_on(self, url: str) -> list[Any] | None:
        """The sockets that listened on server.url's port before the server existed."""
        # Imported here: diagnosis pulls in aiohttp and the protocols, loaded after the spawn.
        from warmgate.entrypoint.diagnosis import listeners_in, url_port

        port = url_port(url)
        if port is None or self.proc_tables is None:
            return None
        return [listener for listener in listeners_in(self.proc_tables) if listener.port == port]

    def stop(self, grace_s: float, reason: str) -> int:
        """Stop and reap the server (and its group) without an event loop, then say `failed`
        with `reason` in status.json (best effort: the lock released at exit already tells the
        sidecar this run is over). Returns the server's exit code."""
        code = stop_process_group(self.pid, grace_s)
        from warmgate.redact import redact_urls  # a config error may quote a URL's credentials

        with contextlib.suppress(OSError):
            _write_status(self.plan.state_dir, self.instance_id, "failed", redact_urls(reason))
        self.release_state_lock()
        return code


def spawn_first(
    config_path: Path | None, server_command: Sequence[str], environ: Mapping[str, str] | None = None
) -> EarlyServer | None:
    """Start the server now, or return None when what that needs is not plainly readable (the
    caller then validates first and spawns after, reporting any error as it always has).

    On success the handled signals stay blocked, like around every spawn, until the supervisor
    installs their handlers."""
    env = os.environ if environ is None else environ
    instance_id = _uuid4_hex()  # like state.new_instance_id; StateWriter goes on with it
    try:
        plan = plan_spawn(config_path, server_command, env)
        lock_fd = _prepare_state_dir(plan.state_dir, instance_id)
    except Declined:
        return None
    reap_any = os.getpid() == 1 or become_subreaper()
    tables = _read_proc_tables()
    argv = resolve_self(plan.command)
    block_handled_signals()
    try:
        pid = spawn_process(argv, server_environment(env))
    except SpawnError:
        # The full path spawns again, fails the same way and records it in the state directory.
        unblock_handled_signals()
        if lock_fd is not None:
            os.close(lock_fd)
        return None
    return EarlyServer(
        pid=pid,
        instance_id=instance_id,
        plan=plan,
        argv=argv,
        reap_any=reap_any,
        lock_fd=lock_fd,
        proc_tables=tables,
        spawned_at=time.monotonic(),
    )


def plan_spawn(
    config_path: Path | None, server_command: Sequence[str], environ: Mapping[str, str]
) -> SpawnPlan:
    """The server command and the state directory, exactly as the full validation will read them,
    or Declined. The file is not read at all when neither comes from it (a command after `--`
    and WARMGATE_STATE_DIR, as the chart sets it): the full validation reads it after the spawn."""
    root: dict[str, yaml.Node] = {}
    needs_file = not server_command or not environ.get(STATE_DIR_VARIABLE)
    if config_path is not None and needs_file:
        root = _mapping_items(_compose(config_path))
    if server_command:
        command, from_config = tuple(server_command), False
    else:
        command, from_config = _server_command(root), True
    return SpawnPlan(command=command, command_from_config=from_config, state_dir=_state_dir(root, environ))


def _compose(path: Path) -> yaml.Node:
    try:
        text = read_capped(path, MAX_CONFIG_BYTES).decode("utf-8")
    except (OSError, ValueError) as exc:  # missing, not regular, too large, not UTF-8: all decline
        raise Declined(str(exc)) from None
    import yaml  # here: a start that needs nothing from the file does not pay for yaml

    # Composed, never constructed: no constructor runs, and aliases stay shared nodes, so only the
    # two values read here are ever looked at (the full path checks the whole graph's expansion).
    loader = yaml.CSafeLoader(text) if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise Declined(str(exc)) from None
    finally:
        loader.dispose()
    if node is None:  # an empty file: every default
        return yaml.MappingNode(_MAP_TAG, [])
    return node


def _mapping_items(node: yaml.Node) -> dict[str, yaml.Node]:
    import yaml

    """A plain mapping's string keys -> value nodes; Declined for anything a constructor would
    read differently (a merge key, a duplicate key, a tagged mapping)."""
    if not isinstance(node, yaml.MappingNode) or node.tag != _MAP_TAG:
        raise Declined("not a plain mapping")
    items: dict[str, yaml.Node] = {}
    for key, value in node.value:
        if key.tag == _MERGE_TAG:
            raise Declined("a merge key")
        if not isinstance(key, yaml.ScalarNode) or key.tag != _STR_TAG:
            continue  # never one of the keys read here; the full validation judges it
        if key.value in items:
            raise Declined(f"duplicate key {key.value!r}")
        items[key.value] = value
    return items


def _string(node: yaml.Node) -> str:
    import yaml

    if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG or "\0" in node.value:
        raise Declined("not a plain string")
    return str(node.value)


def _server_command(root: dict[str, yaml.Node]) -> tuple[str, ...]:
    import yaml

    server = root.get("server")
    if server is None:
        return DEFAULT_SERVER_COMMAND
    node = _mapping_items(server).get("command")
    if node is None:
        return DEFAULT_SERVER_COMMAND
    if isinstance(node, yaml.ScalarNode):
        try:
            command = tuple(shlex.split(_string(node)))
        except ValueError as exc:
            raise Declined(str(exc)) from None
    elif isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
        command = tuple(_string(item) for item in node.value)
    else:
        raise Declined("server.command is neither a list nor a string")
    if not command:
        raise Declined("no server command")
    return command


def _state_dir(root: dict[str, yaml.Node], environ: Mapping[str, str]) -> Path:
    override = environ.get(STATE_DIR_VARIABLE)
    if override:
        return Path(_plain_env_string(override))
    node = root.get("state_dir")
    return Path(DEFAULT_STATE_DIR if node is None else _string(node))


def _plain_env_string(value: str) -> str:
    """A WARMGATE_* value is read by YAML's scalar rules: take it only when those rules leave it
    the very string it is. A path of word characters and `/ . + @ = ~ -` that starts with none
    of YAML's indicators and holds a `/` is one: no implicit type of YAML 1.1 (number, bool,
    null, timestamp, merge, value) has a `/`, so yaml need not even be imported for it."""
    if _PLAIN_PATH.fullmatch(value) is None or "/" not in value:
        raise Declined(f"{STATE_DIR_VARIABLE} is not a plain path")
    return value


def _prepare_state_dir(state_dir: Path, instance_id: str) -> int | None:
    """Create the directory, take the instance lock, remove an earlier run's ready marker and say
    `starting` in status.json for this instance (so nothing of the earlier run is read as this
    one's while the config loads; StateWriter then writes the full status).

    Returns the lock's fd (None on a filesystem without flock, where StateWriter runs without the
    lock too); Declined when anything fails (the full path then reports it, before any server
    exists)."""
    fd: int | None = None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        locked = _lock(fd)
        if locked is False:
            raise Declined(f"{state_dir / LOCK_FILE} is locked by another process")
        if locked is None:
            os.close(fd)
            fd = None
        with contextlib.suppress(FileNotFoundError):
            (state_dir / READY_FILE).unlink()
        _write_status(state_dir, instance_id, "starting", "server started; loading the configuration")
    except (OSError, ValueError, Declined) as exc:  # ValueError: a NUL in the path
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise Declined(str(exc)) from None
    return fd


def _uuid4_hex() -> str:
    """uuid.uuid4().hex without importing uuid (it imports platform: milliseconds of every start)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def _write_status(state_dir: Path, instance_id: str, phase: str, message: str) -> None:
    """A status.json of this instance written before StateWriter exists, atomically (temp file,
    fsync, rename), with the fields state.Status requires (a test reads it back through
    state.read_status)."""
    now = time.time()
    status = {
        "schema_version": STATUS_SCHEMA_VERSION,
        "instance_id": instance_id,
        "pid": os.getpid(),
        "phase": phase,
        "started_at": now,
        "phase_started_at": now,
        "updated_at": now,
        "message": message,
    }
    path = state_dir / STATUS_FILE
    temporary = state_dir / f".{STATUS_FILE}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (json.dumps(status, indent=2, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _lock(fd: int) -> bool | None:
    """True once locked, None when the filesystem has no flock, False while another process
    holds it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_RETRY_S)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None
            raise


def _read_proc_tables() -> list[str] | None:
    tables: list[str] = []
    for path in PROC_NET_TCP:
        with contextlib.suppress(OSError), open(path) as table:
            tables.append(table.read())
    return tables or None
