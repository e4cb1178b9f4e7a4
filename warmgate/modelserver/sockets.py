"""Listening sockets: one per worker on a shared port (SO_REUSEPORT), or one plain socket; and
where the gRPC server listens (grpc binds its own sockets, so it gets an address, not a socket)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

BACKLOG = 1024


class ListenError(Exception):
    """The address cannot be bound; one line."""


@dataclass(frozen=True)
class GrpcListen:
    host: str
    # 0: any free port (a single process; the supervisor resolves it before forking workers).
    port: int
    # Several workers bind the port the supervisor holds, each with SO_REUSEPORT.
    shared: bool


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def bind_socket(
    host: str, port: int, *, reuse_port: bool, listen: bool, scheme: str = "http"
) -> socket.socket:
    """Bind (and listen). With reuse_port, several sockets share the port and the kernel spreads
    new connections across the listening ones; a socket that is bound but not listening holds
    the port without receiving connections. `scheme` only names the address in errors."""
    if reuse_port and not reuse_port_supported():
        raise ListenError(
            f"cannot share {format_url(host, port, scheme)} between workers: this platform has no "
            "SO_REUSEPORT; use --workers 1"
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve listen address {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {format_url(host, port, scheme)}: {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def bound_port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def format_url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
