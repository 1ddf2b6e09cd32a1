"""The data plane, client side: asyncio.Protocol + httptools (llhttp) request parsing.

A `ClientConnection` parses requests, enforces the request limits and framing rules
(RELIABILITY.md rows 1-7, 15-21, 30) before anything is forwarded, and keeps the pipeline in
order: each request becomes an `Exchange`; only the first one in the queue talks upstream, the
others wait with client reads paused. One lazy timer per connection watches the idle,
request-head and response-head deadlines (`proxy.dataplane.timers`).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from proxy import headers as hdr
from proxy.config.schema import Limits
from proxy.dataplane.accesslog import AccessLog
from proxy.dataplane.errors import CLOSING
from proxy.dataplane.exchange import Exchange
from proxy.dataplane.request import (
    HOST,
    MAX_FIELD,
    MAX_HEADERS,
    MAX_HEADERS_TOTAL,
    MAX_LINE,
    NONE,
    SPECIAL,
    Reject,
    Stop,
    bare_request,
    check_request_line,
    framing_error,
    new_request_id,
    origin_form,
    our_via,
)
from proxy.dataplane.timers import ClientTimers
from proxy.dataplane.types import Goals, LazyHeaders, Metrics, header_dict
from proxy.dataplane.upstream import Pools

BLOCK_UP, BLOCK_PIPE, BLOCK_CONN = 1, 2, 4  # reasons client reads are paused


BACKLOG = 1024  # as the listen sockets the app binds itself


class ClientConnection(ClientTimers[Exchange], asyncio.Protocol):
    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None  # request whose body is being read
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
        self.resp_ex: Exchange | None = None  # waiting for its response head, see watch_response
        self.resp_deadline = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        self.last_body = 0.0
        self.head_size = 0
        self.url_done = False
        self.corked: list[bytes] | None = None
        self.valid_host = b""  # the last Host value that passed the syntax check

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
                check_request_line(data)
            self.parser.feed_data(data)
            if self.in_head:
                self._count_head(began, len(data))
        except Reject as exc:
            self.reject(exc.reason)
        except httptools.HttpParserUpgrade:
            self._stop_reading()  # the request was served; no protocol switch follows
        except httptools.HttpParserError as exc:
            ctx = exc.__context__
            if isinstance(ctx, Reject):
                self.reject(ctx.reason)
            elif not isinstance(ctx, Stop):
                self.reject("bad_request")

    def _count_head(self, began: bool, size: int) -> None:
        """Bound a head that llhttp is still buffering (one field spread over many reads)."""
        if began:
            self.head_size += size
        else:  # the head started inside this read: count what the callbacks saw
            self.head_size = len(self.url) + self.hsize
        if self.head_size > MAX_LINE + MAX_HEADERS_TOTAL + 1024:
            raise Reject("headers_too_large" if self.url_done else "uri_too_long")

    # --- writing -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.corked is not None:
            self.corked.append(data)
        elif not self.closed:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.corked is not None:
            self.corked.extend(parts)
        elif not self.closed:
            self.transport.writelines(parts)

    def cork(self) -> None:
        """Collect writes until `uncork`: one upstream read becomes one send to the client."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        out, self.corked = self.corked, None
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def abort(self) -> None:
        self.uncork()  # what was received before the failure still reaches the client
        self.closing = True
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # also ends a lingering close

    def block_read(self, bit: int) -> None:
        if not self.blocks and not self.closed:
            self.transport.pause_reading()
        self.blocks |= bit

    def unblock_read(self, bit: int) -> None:
        if self.blocks & bit:
            self.blocks &= ~bit
            if not self.blocks and not self.closed and not self.closing:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self.closing = True
        if not self.closed:
            self.transport.pause_reading()

    def must_close(self, ex: Exchange) -> bool:
        return (
            not ex.keep_alive
            or self.server.draining
            or ex.seq >= self.limits.keepalive_requests
            or (self.closing and len(self.queue) <= 1)
        )

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
        if self.blocks:
            self.unblock_read(BLOCK_UP | BLOCK_CONN)  # blocks set on behalf of `ex` end with it
        if ex.close_after:
            self.closed = True
            self.closing = True
            if not ex.req_done or ex.error in CLOSING:
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
    def on_message_begin(self) -> None:
        self.in_head = True
        self.url_done = False
        self.url = b""
        self.headers: list[hdr.Header] = []
        self.hsize = 0
        self.fields = 0
        self.hosts = 0
        self.cl: list[bytes] = []
        self.te: list[bytes] = []
        self.conn_values: list[bytes] = []
        self.expect: bytes | None = None
        self.xff: bytes | None = None
        self.rid: bytes | None = None
        self.xfp: bytes | None = None
        self.looped = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            raise Reject("uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # chunked trailers are not forwarded
        self.url_done = True
        size = len(name) + len(value) + 2  # the field line "name: value"
        self.hsize += size + 2  # and its CRLF
        # Every field line counts, also the ones dropped below: the limits bound what the
        # client sent, not what is forwarded.
        self.fields += 1
        if self.fields > MAX_HEADERS or size > MAX_FIELD or self.hsize > MAX_HEADERS_TOTAL:
            raise Reject("headers_too_large")
        lname = name.lower()
        if b"_" in lname:
            return
        value = value.rstrip(b" \t")  # trailing OWS is not part of the value (RFC 9110 §5.5)
        if lname in SPECIAL:
            self._special(lname, value)
        self.headers.append((lname, name, value))

    def _special(self, lname: bytes, value: bytes) -> None:
        if lname == b"host":
            self.hosts += 1
            if value != self.valid_host:  # a keep-alive client repeats its Host
                if HOST.fullmatch(value) is None:
                    raise Reject("bad_request")
                self.valid_host = value
        elif lname == b"content-length":
            self.cl.append(value)
        elif lname == b"transfer-encoding":
            self.te.append(value)
        elif lname == b"connection":
            self.conn_values.append(value)
        elif lname == b"expect":
            self.expect = value if self.expect is None else b"\x00"
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            self.rid = value
        elif lname == b"x-forwarded-proto":
            self.xfp = value
        elif lname == b"via":
            self.looped = self.looped or our_via(value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.url_done = True
        self.head_size = 0
        self.deadline_kind = None
        self.requests += 1
        req = self._request()
        ex = Exchange(self, req)
        if ex.local is None:
            ex.prepare(self.server.get_table(), LazyHeaders(self.headers), self.expect)
        if ex.chunked or ex.content_length:
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

    def _request(self) -> tuple[Any, ...]:
        """The parsed request, as `proxy.dataplane.request.REQUEST_FIELDS`."""
        p = self.parser
        method = p.get_method()
        http10 = p.get_http_version() == "1.0"
        cl = self.cl
        error = framing_error(method, http10, self.hosts, cl, self.te, self.url, self.looped)
        rid = self.rid
        if rid is None or not hdr.valid_request_id(rid):
            rid = new_request_id()
        trusted = self.limits.trusted_hops
        peer = self.peer
        return (
            method,
            origin_form(self.url),
            http10,
            p.should_keep_alive(),
            self.headers,
            int(cl[0]) if cl and error is None else None,
            bool(self.te) and error is None,
            rid,
            hdr.client_address(peer, self.xff, trusted) if trusted else peer,
            hdr.nominated(self.conn_values) if self.conn_values else NONE,
            hdr.forwarded_for(self.xff, peer),
            self.xfp if trusted > 0 and self.xfp else b"http",
            self.hosts == 1,
            error,
        )

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


class ProxyServer:
    """The listening side of the data plane."""

    def __init__(
        self,
        get_table: Callable[[], Any],
        pools: Pools,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        limits: Limits,
    ) -> None:
        self.get_table = get_table
        self.pools = pools
        self.metrics = metrics
        self.access_log = access_log
        self.limits = limits
        self.goals: Goals | None = None  # set by App when canaries have A/B goals
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.draining = False
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(
        self, host: str, port: int, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> None:
        self.loop = asyncio.get_running_loop()
        # asyncio listens with a backlog of 100 (also on a socket it is given); a burst of
        # new connections beyond it is dropped and retried by the client a second later.
        if sock is not None:
            srv = await self.loop.create_server(
                lambda: ClientConnection(self), sock=sock, backlog=BACKLOG
            )
        else:
            srv = await self.loop.create_server(
                lambda: ClientConnection(self),
                host,
                port,
                reuse_port=reuse_port or None,
                backlog=BACKLOG,
            )
        self._server = srv
        self.port = srv.sockets[0].getsockname()[1]

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
        if goals is not None and ex.subset and goals.wants(name):
            goals.observe(
                name,
                ex.subset,
                ex.method.decode("latin-1"),
                ex.target.decode("latin-1"),
                header_dict(ex.headers),
                ex.client_ip,
            )

    async def drain(self, timeout: float) -> None:
        """Stop accepting; in-flight requests finish with `Connection: close`; idle ones close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        self.connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
