"""A byte tunnel after an upstream's `101 Switching Protocols` (WebSocket and other upgrades).

The rules it keeps:
- only a request with `Connection: upgrade` and an `Upgrade` other than `h2c` is tunnelled
  (`upgrade_of`); it goes upstream on a fresh connection that is never pooled afterwards;
- after the 101 both transports get a `_End` protocol: bytes read on one side are written to
  the other; a side whose write buffer is full pauses the other side's reads until it drains;
- either side closing (EOF included: a half-close is mapped to a full close) closes the other;
- no byte either way for `limits.tunnel_idle_timeout` closes both (one lazy timer);
- the tunnel is counted per (route, version) while open, and drains with the server.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import httptools

from proxy import headers as hdr
from proxy.dataplane.errors import status_line
from proxy.dataplane.heads import NONE, nominated
from proxy.dataplane.request import Request

NEVER_TUNNELLED = frozenset({b"h2c"})  # HTTP/2 cleartext upgrade: served as plain HTTP/1.1
BLOCK_SWITCH: Final = 8  # a client-read block bit (as types.BLOCK_*): the upgrade's answer


def upgrade_of(req: Request) -> bytes | None:
    """The `Upgrade` value to tunnel for `req`, or None (no upgrade, or one never tunnelled)."""
    if b"upgrade" not in req.connection:
        return None
    values = [v.strip() for name, _, v in req.headers if name == b"upgrade"]
    if len(values) != 1 or not values[0]:
        return None
    if values[0].lower() in NEVER_TUNNELLED:
        return None
    return values[0]


def upgrade_fields(proto: bytes) -> bytes:
    """The hop-by-hop fields an upgrade carries, to the upstream and back to the client."""
    return b"Connection: upgrade\r\nUpgrade: " + proto + b"\r\n"


def http_again(client: Any, ex: Any) -> None:
    """A non-101 answer to an upgrade request: the connection goes on as HTTP/1.1.

    llhttp stops at an upgrade request's head, so a fresh parser reads the next request; bytes
    the client sent ahead of the answer cannot be read as HTTP, so then the connection closes.
    """
    if client.early:
        ex.close_after = True
        client.closing = True
        return
    client.parser = httptools.HttpRequestParser(client)
    client.unblock_read(BLOCK_SWITCH)


class _End(asyncio.Protocol):
    """One side of a tunnel: what it reads goes to the other side's transport."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.other: _End = None  # type: ignore[assignment]  # set by Tunnel
        self.paused = False  # our reads paused because the other side cannot take more

    def data_received(self, data: bytes) -> None:
        self.tunnel.last = self.tunnel.loop.time()
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.tunnel.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        other = self.other
        if not other.paused and not self.tunnel.closed:
            other.paused = True
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other.paused and not self.tunnel.closed:
            other.paused = False
            other.transport.resume_reading()


class Tunnel:
    """Client transport <-> upstream transport, from the 101 until either side ends."""

    def __init__(
        self,
        server: Any,  # dataplane.server.ProxyServer: metrics, the set of open tunnels
        route: str,
        version: str,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        idle_timeout: float,
    ) -> None:
        self.server = server
        self.route = route
        self.version = version
        self.loop = server.loop
        self.idle_timeout = idle_timeout
        self.last = self.loop.time()
        self.closed = False
        self.client = _End(self, client)
        self.upstream = _End(self, upstream)
        self.client.other, self.upstream.other = self.upstream, self.client
        self.timer: asyncio.TimerHandle | None = None

    def start(self, early_client: bytes, early_upstream: bytes) -> None:
        """Take over both transports; bytes that came after either head are passed on."""
        server = self.server
        server.tunnels.add(self)
        metrics = server.metrics
        if metrics is not None and hasattr(metrics, "tunnel_opened"):
            metrics.tunnel_opened(self.route, self.version)
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
        if early_upstream:
            self.client.transport.write(early_upstream)
        if early_client:
            self.upstream.transport.write(early_client)
        for end in (self.client, self.upstream):
            if end.transport.is_closing():
                self.close()
                return
            end.transport.resume_reading()
        self.timer = self.loop.call_later(self.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        if self.closed:
            return
        idle = self.loop.time() - self.last
        if idle >= self.idle_timeout:
            self.close()
            return
        self.timer = self.loop.call_later(self.idle_timeout - idle + 0.01, self._idle_check)

    def close(self) -> None:
        """End both sides (idempotent); what was written is flushed before the close."""
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for end in (self.client, self.upstream):
            end.transport.close()
        server = self.server
        server.tunnels.discard(self)
        metrics = server.metrics
        if metrics is not None and hasattr(metrics, "tunnel_closed"):
            metrics.tunnel_closed(self.route, self.version)


def close_version(server: Any, route: str, version: str) -> int:
    """Close every open tunnel of `version` on `route` (a rollback's
    `close_tunnels_on_rollback`): the clients reconnect, and are routed afresh."""
    doomed = [t for t in server.tunnels if t.route == route and t.version == version]
    for tunnel in doomed:
        tunnel.close()
    return len(doomed)


def switch(
    ex: Any, up: asyncio.Transport, headers: list, connection: list[bytes], early_up: bytes
) -> None:
    """The upstream answered `ex` (an upgrade request) with 101: relay the head, then tunnel.

    The client connection leaves the HTTP side for good: its timers stop, the server stops
    counting it as a connection (the tunnel is counted instead), the exchange is recorded
    as a 101 and finished.
    """
    client = ex.client
    names = nominated(connection) if connection else NONE
    lines = hdr.response_lines(headers, names, ex.policy, ex.set_cookie)
    client.uncork()
    client.transport.write(status_line(101) + lines + upgrade_fields(ex.upgrade) + b"\r\n")
    for t in (client.timer, client.body_timer):
        if t is not None:
            t.cancel()
    client.timer = client.body_timer = None
    client.closed = client.closing = True
    client.server.connections.discard(client)
    route = ex.route.name
    server = client.server
    tunnel = Tunnel(
        server, route, ex.subset, client.transport, up, client.limits.tunnel_idle_timeout
    )
    early_client, client.early = client.early, b""
    client.parser = None  # holds bound methods of the connection, as in connection_lost
    ex.status = 101
    ex.resp_started = True
    ex._finish(101)
    tunnel.start(early_client, early_up)
