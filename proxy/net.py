"""Listen addresses: parse, check and bind them; a startup problem becomes a StartupError."""

from __future__ import annotations

import ipaddress
import socket


class StartupError(Exception):
    """The proxy cannot start; the message says why. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def split_listen(listen: str) -> tuple[str, int]:
    """`0.0.0.0:8080`, `[::1]:9901` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(listen: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket; `reuse_port` lets every worker of `serve --workers` bind it too."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def check_free(listen: str) -> tuple[str, int]:
    """(host, port) after proving the address can be bound; port 0 becomes a free port.

    Workers then bind it themselves with SO_REUSEPORT. The socket is closed first: a bound
    socket in the reuse-port group that does not accept would swallow connections.
    """
    host, _ = split_listen(listen)
    sock = bind(listen)
    port = sock.getsockname()[1]
    sock.close()
    return host, port
