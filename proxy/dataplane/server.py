"""The data plane, client side: asyncio.Protocol + httptools (llhttp) request parsing.

A `ClientConnection` parses requests (the head's callbacks: `proxy.dataplane.parse`), enforces
the request limits and framing rules (RELIABILITY.md rows 1-7, 15-21, 30) before anything is
forwarded, and keeps the pipeline in order: each request becomes an `Exchange`; only the first
one in the queue talks upstream, the others wait with client reads paused. One lazy timer per
connection watches the idle, request-head and response-head deadlines
(`proxy.dataplane.timers`). A `ProxyServer` serves every listener of the config; each
connection knows the listener it came in on (routes may be limited to listeners).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast

import httptools

from proxy.config.schema import Limits, ListenerTls
from proxy.dataplane.accesslog import AccessLog
from proxy.dataplane.clientio import ClientIO
from proxy.dataplane.errors import CLOSING
from proxy.dataplane.exchange import Exchange
from proxy.dataplane.fields import as_mapping, header_dict
from proxy.dataplane.listening import Listening, ServerState
from proxy.dataplane.request import UNKNOWN_VERSION, Reject, Stop, bare_request, check_request_line
from proxy.dataplane.rules import lingers
from proxy.dataplane.tls import TlsListener, watch
from proxy.dataplane.tunnel import BLOCK_SWITCH, http_again
from proxy.dataplane.types import (
    BLOCK_CONN,
    BLOCK_PIPE,
    BLOCK_UP,
    Metrics,
)
from proxy.dataplane.upstream import Pools
from proxy.tasks import spawn

BACKLOG: Final = 1024  # as the listen sockets the app binds itself
CERT_POLL: Final = 1.0  # seconds between looks at the certificate files of TLS listeners


class ClientConnection(ClientIO[Exchange]):
    def __init__(self, server: ProxyServer, listening: Listening | None = None) -> None:
        self.server = server
        self.listening = listening or Listening("default")
        self.listener = self.listening.name  # what routing reads, once per request
        self.scheme = self.listening.scheme.encode()  # the X-Forwarded-Proto to send
        self.loop = server.loop
        self.now = self.loop.time  # bound once: no method lookup per call
        self.limits = server.limits
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.parsing = None  # request whose body is being read (ClientTimers: Exchange | None)
        self.in_head = False
        self.closing = False  # no further request is read
        self.closed = False
        self.requests = 0
        self.blocks = 0
        self.write_paused = False
        # One lazy timer for the idle and request-head deadlines: it wakes at most every
        # `period` and re-arms itself, so a busy keep-alive connection creates no timer per
        # request. The body timer exists only while a body is read.
        self.timer: asyncio.TimerHandle | None = None
        self.deadline_kind: str | None = None  # None | "idle" | "head"
        self.deadline = 0.0
        self.period = min(self.limits.header_timeout, self.limits.keepalive_timeout)
        self.resp_ex = None  # waiting for its response head, see watch_response
        self.resp_deadline = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        self.last_body = 0.0
        self.head_size = 0
        self.url_done = False
        self.corked: list[bytes] | None = None
        self.valid_host = b""  # the last Host value that passed the syntax check
        self.early = b""  # bytes after an upgrade request's head (to the tunnel, if any)
        self.version_hint = UNKNOWN_VERSION

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= self.limits.max_connections or server.draining:
            transport.close()
            self.closed = True
            return
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resp_ex = None
        self.server.connections.discard(self)
        for t in (self.timer, self.body_timer):
            if t is not None:
                t.cancel()
        for ex in list(self.queue):
            ex.client_lost()
        self.queue.clear()
        # The parser holds bound methods of this protocol: dropping it frees the closed
        # connection (transport, buffers, timers) now, not at the next full gc pass.
        self.parser = None  # type: ignore[assignment]

    def eof_received(self) -> bool:
        """EOF from the client ends the connection and whatever it had in flight (as nginx
        without proxy_ignore_client_abort: a half-close cannot be told from an abort)."""
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        began = self.in_head
        try:
            if self.parsing is None and not began:
                if self.deadline_kind != "head":
                    self._set_deadline("head", self.limits.header_timeout)  # from 1st byte
                self.version_hint = check_request_line(data)
            self.parser.feed_data(data)
            if self.in_head:
                self._count_head(began, len(data))
        except Reject as rejected:  # (one name per clause: each has its own type)
            self.reject(rejected.reason)
        except httptools.HttpParserUpgrade as upgrade:
            self.early = data[upgrade.args[0] :]
            if self.queue and self.queue[-1].upgrade is not None:
                self.block_read(BLOCK_SWITCH)  # until the answer: a tunnel, or HTTP again
            else:
                self._stop_reading()  # the request was served; no protocol switch follows
        except httptools.HttpParserError as bad:
            ctx = bad.__context__
            if isinstance(ctx, Reject):
                self.reject(ctx.reason)
            elif not isinstance(ctx, Stop):
                self.reject("bad_request")

    # --- pipeline ----------------------------------------------------------------------------
    def finished(self, ex: Exchange) -> None:
        """`ex` wrote its whole response (or gave up): close or go on with the next request."""
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        elif ex in self.queue:
            self.queue.remove(ex)
        if self.closed:
            return
        self.uncork()
        if ex.upgrade is not None and self.blocks & BLOCK_SWITCH:
            http_again(self, ex)
        if self.blocks:
            self.unblock_read(BLOCK_UP | BLOCK_CONN)  # blocks set on behalf of `ex` end with it
        if ex.close_after:
            self.closed = True
            self.closing = True
            if lingers(ex.req_done, ex.error):
                self._linger()
            else:
                self.transport.close()
            return
        if self.blocks:
            self.unblock_read(BLOCK_PIPE)
        if self.queue:
            self.queue[0].start()
            return
        if self.closing:
            self.closed = True
            self.transport.close()
        elif self.parsing is None and not self.in_head:
            self._arm_idle()

    def reject(self, reason: str) -> None:
        """A request that cannot be served: answer in order, then close."""
        self._stop_reading()
        if self.parsing is not None:
            ex = self.parsing
            self.parsing = None
            ex.client_error(reason)
            return
        ex = Exchange(self, bare_request(self.peer))
        ex.local = reason
        self._enqueue(ex)

    def _enqueue(self, ex: Exchange) -> None:
        self.queue.append(ex)
        self.server.in_flight += 1
        if len(self.queue) == 1:
            ex.start()
        else:
            self.block_read(BLOCK_PIPE)

    # --- httptools callbacks -------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.in_head = False
        self.url_done = True
        self.head_size = 0
        self.deadline_kind = None
        self.requests += 1
        ex = Exchange(self, self._request())
        if ex.local is None:
            ex.prepare(
                self.server.get_table(), as_mapping(self.headers), self.expect, self.listener
            )
        if not ex.req_done:  # a body follows
            self.parsing = ex
            self.last_body = self.loop.time()
            self.body_timer = self.loop.call_later(self.limits.body_timeout, self._body_check)
        self._enqueue(ex)
        if self.requests >= self.limits.keepalive_requests and self.parsing is None:
            self._stop_reading()
            raise Stop
        if ex.local in CLOSING:
            self.parsing = None
            self._stop_reading()
            raise Stop

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            self.last_body = self.loop.time()
            ex.client_body(body)

    def on_message_complete(self) -> None:
        ex, self.parsing = self.parsing, None
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if ex is not None:
            ex.client_done()
        elif self.queue:
            self.queue[-1].req_done = True
        if not self.parser.should_keep_alive() or self.requests >= self.limits.keepalive_requests:
            self._stop_reading()


class ProxyServer(ServerState):
    """The listening side of the data plane."""

    def __init__(
        self,
        get_table: Callable[[], Any],
        pools: Pools,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        limits: Limits,
    ) -> None:
        super().__init__(get_table, pools, metrics, access_log, limits)
        self.port = 0  # the first listener's
        self.ports: dict[str, int] = {}  # listener name -> port
        self.tls: dict[str, TlsListener] = {}  # TLS listener name -> its contexts
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()

    async def start(
        self,
        host: str,
        port: int,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        listener: str = "default",
        tls: ListenerTls | None = None,
    ) -> None:
        """Serve one listener; called once per listener of the config, in config order."""
        self.loop = asyncio.get_running_loop()
        listening = Listening(listener, "http" if tls is None else "https")
        extra: dict[str, Any] = {}
        if tls is not None:
            extra = {
                "ssl": self._tls_context(listener, tls),
                "ssl_handshake_timeout": self.limits.header_timeout,
            }

        # asyncio listens with a backlog of 100 (also on a socket it is given); a burst of
        # new connections beyond it is dropped and retried by the client a second later.
        def protocol() -> asyncio.Protocol:  # a protocol by its methods, not by its base
            return cast(asyncio.Protocol, ClientConnection(self, listening))

        if sock is not None:
            srv = await self.loop.create_server(protocol, sock=sock, backlog=BACKLOG, **extra)
        else:
            srv = await self.loop.create_server(
                protocol,
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=BACKLOG,
                **extra,
            )
        self._servers.append(srv)
        sockets: Any = cast(Any, srv).sockets  # a list on uvloop (typeshed says tuple)
        listening.port = sockets[0].getsockname()[1]
        self.ports[listener] = listening.port
        self.port = self.port or listening.port

    def _tls_context(self, listener: str, tls: ListenerTls) -> ssl.SSLContext:
        """The listener's server context (SNI and reloads inside); the watch starts once."""
        metrics: Any = self.metrics
        contexts = self.tls[listener] = TlsListener(
            listener,
            tls,
            getattr(metrics, "tls_reload", None),
            getattr(metrics, "tls_handshake_error", None),
        )
        if len(self.tls) == 1:
            spawn(watch(self.tls, CERT_POLL), "certificate watch", self._tasks)
        return contexts.context

    def reload_certificates(self) -> None:
        """Reload every TLS listener's certificates now (SIGHUP, POST /api/v1/reload)."""
        for contexts in self.tls.values():
            contexts.reload()

    def record(self, ex: Exchange, code: int, seconds: float) -> None:
        """Count and log a finished exchange."""
        self.in_flight -= 1
        route = ex.route
        name = route.name if route is not None else ""
        if self.metrics is not None:
            service = (route.service or route.name) if route is not None else ""
            self.metrics.observe(name, service, ex.subset, code, seconds)
        if self.access_log is not None:
            self.access_log.log(ex, name, code, seconds)
        goals = self.goals
        if goals is not None and ex.subset and name in goals.watched:
            goals.observe(
                name,
                ex.subset,
                ex.req.method.decode("latin-1"),
                ex.req.target.decode("latin-1"),
                header_dict(ex.req.headers),
                ex.req.client_ip,
            )

    async def drain(self, timeout: float) -> None:
        """Stop accepting; in-flight requests finish with `Connection: close`; idle ones close."""
        self.draining = True
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + timeout
        while (self.connections or self.tunnels) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for tunnel in list(self.tunnels):
            tunnel.close()

    async def close(self) -> None:
        self.draining = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for srv in self._servers:
            srv.close()
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        for tunnel in list(self.tunnels):
            tunnel.close()
        for srv in self._servers:
            await srv.wait_closed()
