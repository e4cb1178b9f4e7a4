"""Unambiguous start-up mistakes, found while the health wait polls (`Diagnose` in
protocols/health.py), so that they fail in seconds instead of after `server.start_timeout_s`:

- another process already served the configured port before the server was spawned: its
  answers are not the server's, however healthy they look;
- the server's processes listen, and answer ready, on other ports but not on the configured one;
- the configured port speaks another protocol than server.url's scheme: HTTP/1.1 where gRPC is
  configured (the server's HTTP port), HTTP/2 where HTTP is, TLS where plaintext is, or the
  reverse (protocols/sniff.py listens to the port's first bytes);
- the server is up and says it does not serve the configured model (the protocol's
  `Adapter.unknown_model`; OIP: 404, and not in the repository index).

Who listens where comes from /proc/net/tcp and tcp6: every listening socket of this network
namespace with its inode, whoever owns it (another container of the pod included). A snapshot of
the configured port taken just before the spawn tells a listener that was there first. psutil
names owners and lists the ports the server's own processes listen on. Where any of this cannot
be read (not Linux, no /proc, no permission) a check answers "cannot tell", and the wait is the
plain one it was before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from warmgate.config import ServerConfig
from warmgate.protocols import make_adapter
from warmgate.protocols.answers import cut
from warmgate.protocols.base import Adapter
from warmgate.protocols.health import Mistake
from warmgate.protocols.sniff import mismatch, sniff

log = logging.getLogger("warmgate.run")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"
# The configured port may be bound a moment after the server's other ports (Triton opens gRPC,
# HTTP and metrics within milliseconds of each other), so a server that answers ready elsewhere
# gets this long to start listening where it should.
WRONG_PORT_GRACE_S = 2.0
# At most this many of the server's other ports are asked whether it is ready there.
MAX_PORTS_ASKED = 3
# A port that speaks another protocol than server.url's scheme must keep doing so this long (a
# few sniffs) before the start fails: one odd answer from a server starting up is no verdict.
WRONG_PROTOCOL_GRACE_S = 1.0
# How long one sniff of the port may take, and how long a port that spoke the expected protocol
# is believed before it is asked again (a sniff costs the server a connection and a log line).
SNIFF_TIMEOUT_S = 0.5
SNIFF_MATCH_CACHE_S = 30.0


@dataclass(frozen=True)
class Listener:
    address: IPAddress
    port: int
    inode: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"


def listening_sockets(paths: Iterable[Path] = PROC_NET_TCP) -> list[Listener] | None:
    """Every listening TCP socket of this network namespace; None when /proc cannot be read."""
    tables: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            tables.append(path.read_text())
    return listeners_in(tables) if tables else None


def listeners_in(tables: Iterable[str]) -> list[Listener]:
    """The listening sockets in /proc/net/tcp{,6} texts (read before the spawn, by spawnfirst.py)."""
    listeners: list[Listener] = []
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            with contextlib.suppress(ValueError):
                address, port = fields[1].split(":")
                listeners.append(Listener(_proc_address(address), int(port, 16), int(fields[9])))
    return listeners


def _proc_address(hex_address: str) -> IPAddress:
    """/proc/net/tcp writes each 32-bit word of the address in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _unmapped(ipaddress.ip_address(raw))


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1: a dual-stack socket bound to an IPv4
    address, as grpc binds) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def url_port(url: str) -> int | None:
    try:
        parts = urlsplit(url)
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def listeners_before_spawn(server: ServerConfig) -> list[Listener] | None:
    """The sockets already listening on the configured port (any address) before the server
    exists: none of them can be the server's."""
    port = url_port(server.url)
    found = listening_sockets() if port is not None else None
    return None if found is None else [listener for listener in found if listener.port == port]


@dataclass(frozen=True)
class Target:
    """Where server.url points, when that is this machine."""

    url: str
    port: int
    addresses: frozenset[IPAddress]

    def served_by(self, listener: Listener) -> bool:
        return listener.port == self.port and (
            listener.address.is_unspecified or listener.address in self.addresses
        )


class StartupDiagnosis:
    """The health wait's `Diagnose` for one run: call with the last poll's reason."""

    def __init__(
        self,
        server: ServerConfig,
        adapter: Adapter,
        session: aiohttp.ClientSession,
        server_pid: int,
        before_spawn: list[Listener] | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.adapter = adapter
        self.session = session
        self.server_pid = server_pid
        self.before_spawn = before_spawn
        self.clock = clock
        # Until when the port is believed to speak what server.url's scheme needs.
        self._protocol_matched_until = -float("inf")
        self._target: Target | None = None
        self._resolved = False
        self._warned = False

    async def __call__(self, reason: str | None, timeout_s: float) -> Mistake | None:
        try:
            return await self._diagnose(reason, timeout_s)
        except Exception as exc:  # a diagnosis is a shortcut: when it breaks, wait as before
            if not self._warned:
                name = type(exc).__name__
                log.warning("start-up diagnosis unavailable (%s: %s); waiting as usual", name, exc)
                self._warned = True
            return None

    async def _diagnose(self, reason: str | None, timeout_s: float) -> Mistake | None:
        target = await self.target()
        if target is not None:
            mistake = await asyncio.to_thread(self._taken_before_spawn, target)
            if mistake is not None or reason is None:
                return mistake
            mistake = await self._listening_elsewhere(target, timeout_s)
            if mistake is not None:
                return mistake
        if reason is None:
            return None
        mistake = await self._wrong_protocol(reason, timeout_s)
        if mistake is not None:
            return mistake
        unknown = await self.adapter.unknown_model(self.session, timeout_s)
        if unknown is None:
            return None
        return Mistake("unknown-model", unknown, self.server.unknown_model_grace_s)

    async def target(self) -> Target | None:
        """server.url's port and addresses, resolved once; None unless it is this machine."""
        if not self._resolved:
            self._resolved = True
            self._target = await _local_target(self.server.url)
        return self._target

    def _taken_before_spawn(self, target: Target) -> Mistake | None:
        if not self.before_spawn:
            return None
        now = listening_sockets()
        earlier = {listener.inode for listener in self.before_spawn if target.served_by(listener)}
        taken = [each for each in now or [] if target.served_by(each) and each.inode in earlier]
        if not taken:
            return None
        owners = _describe_owners({listener.inode for listener in taken})
        return Mistake(
            "port-taken",
            f"port {target.port} of server.url {target.url} was already in use before the server started "
            f"({owners}): its answers are not the server's; stop that process or change the port",
        )

    async def _listening_elsewhere(self, target: Target, timeout_s: float) -> Mistake | None:
        everyone = await asyncio.to_thread(listening_sockets)
        if everyone is None or any(target.served_by(listener) for listener in everyone):
            return None  # someone listens where configured: the polls will say what it answers
        own = await asyncio.to_thread(_tree_listeners, self.server_pid)
        elsewhere = sorted({listener for listener in own if listener.port != target.port}, key=str)
        if not elsewhere:
            return None
        for listener in elsewhere[:MAX_PORTS_ASKED]:
            url = _with_port(self.server.url, listener)
            other = make_adapter(self.server.model_copy(update={"url": url}))
            try:
                ready = await other.check_ready(self.session, timeout_s) is None
            finally:
                await other.aclose()  # a gRPC adapter's channel (check_ready sends no timed request)
            if ready:
                ports = ", ".join(str(each) for each in elsewhere)
                return Mistake(
                    "wrong-port",
                    f"nothing listens on port {target.port} of server.url {target.url}, but the server "
                    f"(pid {self.server_pid}) listens on {ports} and is ready at {url}: "
                    "fix server.url or the server's port",
                    WRONG_PORT_GRACE_S,
                )
        return None

    async def _wrong_protocol(self, reason: str, timeout_s: float) -> Mistake | None:
        """The port answers, but not in the language of server.url's scheme (HTTP/1.1 at a
        grpc:// URL, HTTP/2 at an http:// one, TLS where the scheme is plaintext or the reverse)."""
        if self.clock() < self._protocol_matched_until:
            return None
        heard = await sniff(self.server.url, min(timeout_s, SNIFF_TIMEOUT_S))
        problem = mismatch(self.server.url, heard)
        if problem is None:
            if heard is not None:
                self._protocol_matched_until = self.clock() + SNIFF_MATCH_CACHE_S
            return None
        return Mistake(
            "wrong-protocol", f"{problem} (the health check said: {cut(reason, 200)})", WRONG_PROTOCOL_GRACE_S
        )


async def _local_target(url: str) -> Target | None:
    port = url_port(url)
    host = urlsplit(url).hostname
    if port is None or not host:
        return None
    try:
        addresses = frozenset([ipaddress.ip_address(host)])
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), 2.0)
        except (OSError, TimeoutError):
            return None
        addresses = frozenset(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
    local = _local_addresses()
    if not addresses or not all(address.is_loopback or address in local for address in addresses):
        return None
    return Target(url=url, port=port, addresses=addresses)


def _local_addresses() -> frozenset[IPAddress]:
    import psutil

    found: set[IPAddress] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(entry.address.split("%")[0]))
    return frozenset(found)


def _tree_pids(root: int) -> set[int]:
    """The server and every process it started: its descendants, and the members of its session
    (setsid made it a session leader; a daemonised worker re-parented to us stays in it)."""
    import psutil

    pids = {root}
    with contextlib.suppress(psutil.Error):
        pids.update(child.pid for child in psutil.Process(root).children(recursive=True))
    for pid in psutil.pids():
        with contextlib.suppress(OSError):
            if os.getsid(pid) == root:
                pids.add(pid)
    return pids


def _tree_listeners(root: int) -> set[Listener]:
    import psutil

    found: set[Listener] = set()
    for pid in _tree_pids(root):
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for connection in connections:
            if connection.status == psutil.CONN_LISTEN and connection.laddr:
                with contextlib.suppress(ValueError):
                    address = _unmapped(ipaddress.ip_address(connection.laddr.ip.split("%")[0]))
                    found.add(Listener(address, connection.laddr.port, 0))
    return found


def _describe_owners(inodes: set[int]) -> str:
    """Names the processes holding these sockets ("pid 42: python3 -m http.server 8000"), where
    /proc shows them (another container's processes are invisible)."""
    import psutil

    wanted = {f"socket:[{inode}]" for inode in inodes}
    owners: list[str] = []
    for pid in psutil.pids():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                continue
            command = " ".join(psutil.Process(pid).cmdline())[:120] or "?"
        except (OSError, psutil.Error):
            continue
        owners.append(f"pid {pid}: {command}")
    return "; ".join(owners[:3]) if owners else "by a process warmgate cannot see"


def _with_port(url: str, listener: Listener) -> str:
    """server.url with the listener's port (and its address, unless it listens on all of them);
    credentials, path and query stay."""
    parts = urlsplit(url)
    if listener.address.is_unspecified:
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
    else:
        host = str(listener).rsplit(":", 1)[0]
    userinfo, at, _ = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}:{listener.port}"))
