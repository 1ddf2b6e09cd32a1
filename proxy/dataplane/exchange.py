"""One request/response exchange: decision, upstream attempts, streaming both ways.

An Exchange is created when a request head is complete. It asks the routing table once, then
(when it is first in its connection's pipeline) acquires an upstream connection, writes the
request head and streams the body; the upstream connection calls back with the response head,
body chunks and the end. Flow control is symmetric: a side whose writes back up pauses the
other side's reads. Nothing here awaits: timers are `loop.call_later` handles.

What to retry, how a body is framed and when the client connection closes are decided in
`proxy.dataplane.rules`; the bytes of the heads are built in `proxy.dataplane.heads`; the
response is streamed by `proxy.dataplane.stream.ResponseStream`, and what a route does besides
picking a version (redirect, direct response, rewrite, failover) is in the base class
`proxy.dataplane.actions.RouteActions`. This module is the I/O of the request side and of the
attempts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from proxy.dataplane.actions import ANSWER, RouteActions
from proxy.dataplane.clientio import ClientIO
from proxy.dataplane.errors import ERRORS, error_response
from proxy.dataplane.heads import chunk, policy_for, request_head
from proxy.dataplane.heads import nominated as _nominated  # noqa: F401  (tests read it here)
from proxy.dataplane.mirror import MirrorExchange, mirror_payload
from proxy.dataplane.request import Request
from proxy.dataplane.rules import (
    NO_BODY,
    NO_RETRY,
    REPLAY_LIMIT,
    RETRY_FRESH,
    RETRY_STATUS,
    attempts_after_retry,
    close_after_error,
    response_deadline,
    retry_after_connect_failure,
    retry_after_reset,
    retry_after_response_timeout,
    retry_after_status,
)
from proxy.dataplane.tunnel import switch, upgrade_fields, upgrade_of
from proxy.dataplane.types import BLOCK_CONN
from proxy.dataplane.upconn import UpstreamConnection
from proxy.dataplane.upstream import CONNECT_REFUSED, CONNECT_TIMEOUT, Endpoint, UpstreamPool

_random: Final = random.random  # a static in the compiled build, not a global lookup

if TYPE_CHECKING:
    from proxy.routing.table import CompiledRoute, RoutingTable


class Exchange(RouteActions):
    """One request and its response; the response side is `ResponseStream`."""

    __slots__ = (
        "expect_continue",
        "route",
        "mirror",
        "ep",
        "local",
        "fault_status",
        "attempts_left",
        "stale_retried",
        "body",
        "body_bytes",
        "per_try",
        "upstream_addr",
        "upgrade",
    )

    def __init__(self, client: ClientIO[Any], req: Request) -> None:
        self.client = client
        self.loop = client.loop
        self.now = client.now
        self.t0 = self.now()
        self.seq = client.requests  # position on its client connection
        self.req = req
        self.local = req.error  # reason of a proxy-made answer (a framing error), else None
        self.expect_continue = False
        # route, pool, ep and policy are set by prepare()/_proceed()/_on_conn() before use.
        self.route: CompiledRoute | None = None  # None: no route matched (404)
        self.subset = ""
        self.set_cookie: str | None = None
        self.mirror: tuple[str, ...] | None = None
        self.pool: UpstreamPool = None  # type: ignore[assignment]
        self.conn: UpstreamConnection | None = None
        self.ep: Endpoint = None  # type: ignore[assignment]
        self.fault_status = 0
        self.attempts_left = 0
        self.stale_retried = False
        self.body: list[bytes] | None = []  # kept for a replay; None once too large
        self.body_bytes = 0
        self.req_done = not req.chunked and not req.content_length
        self.head = b""
        self.policy = None  # type: ignore[assignment]  # set by _proceed()
        self.resp_started = False
        self.mode = NO_BODY
        self.status = 0
        self.bytes_sent = 0
        self.close_after = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None
        self.per_try = False
        self.upstream_addr = ""
        self.error = ""
        self.target = req.target
        self.failover = ""
        self.upgrade = upgrade_of(req) if req.connection else None  # tunnelled after a 101

    # --- decision (at head time, before any body byte is read) ------------------------------
    def prepare(
        self,
        table: RoutingTable,
        decide_headers: Mapping[str, str],
        expect: bytes | None,
        listener: str = "default",
    ) -> None:
        req = self.req
        d = table.decide(
            req.method.decode("latin-1"),
            req.target.decode("latin-1"),
            decide_headers,
            req.client_ip,
            _random(),
            listener,
        )
        self.route = route = d.route
        if route is None:
            self.local = "no_route"
            return
        self.subset = d.subset or ""
        self.set_cookie = d.set_cookie
        self.mirror = d.mirror
        if req.content_length is not None and req.content_length > route.max_body:
            self.local = "body_too_large"
        elif expect is not None and expect.lower() != b"100-continue":
            self.local = "expectation_failed"
        elif not self.subset:
            no_answer = route.redirect is None and route.direct is None
            self.local = "no_destination" if no_answer else ANSWER
        else:
            pool = self.client.server.pools.pool(self.subset)
            if pool is None:
                self.local = "no_destination"
            else:
                self.pool = pool
        self.attempts_left = route.retries.attempts
        self.expect_continue = expect is not None and not req.http10

    # --- start (first in the pipeline) --------------------------------------------------------
    def start(self) -> None:
        if self.done:
            return
        if self.local is not None:
            if self.local == ANSWER:
                self._answer()
            else:
                self.fail(self.local)
            return
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        fault = route.fault
        if fault is not None:
            if fault.abort is not None and random.random() * 100 < fault.abort.percent:
                self.fault_status = fault.abort.status
                self.fail("fault_abort")
                return
            if fault.delay is not None and random.random() * 100 < fault.delay.percent:
                self.timer = self.loop.call_later(fault.delay.fixed, self._proceed)
                return
        self._proceed()

    def _proceed(self) -> None:
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        self.timer = None
        if self.done:
            return
        if self.expect_continue and not self.req_done:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if route.rewrite is None:
            self.policy = policy = policy_for(route, self.subset)
        else:
            policy = self._rewrite(route.rewrite)
        self.head = request_head(self.req, policy)
        if self.upgrade is not None:  # hop-by-hop, so dropped by the policy: sent on purpose
            self.head = self.head[:-2] + upgrade_fields(self.upgrade) + b"\r\n"
            self.mirror = None
        self._attempt(fresh=False)
        if self.mirror is not None:
            self._start_mirror()

    def _start_mirror(self) -> None:
        """Send a copy to each mirror Subset once the whole (small) request is known."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        if self.mirror is None or not self.head or not self.req_done or self.body is None:
            return
        mirrors, self.mirror = self.mirror, None
        server = self.client.server
        for mirror in mirrors:
            pool = server.pools.pool(mirror)
            if pool is None:
                continue
            payload = mirror_payload(self.req, mirror, self.head, self.body, self.target)
            MirrorExchange(pool, payload, route.timeout).start()
            if server.metrics is not None:
                server.metrics.mirrored(route.name, mirror)

    def _attempt(self, fresh: bool) -> None:
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        if self.now() - self.t0 >= route.timeout > 0:
            self.fail("upstream_timeout")  # the route's timeout covers every attempt
            return
        # An upgrade never shares a connection: after a 101 it is the tunnel's.
        fresh = fresh or self.upgrade is not None
        if not fresh:  # the common case, without the callback: an idle connection now
            conn = self.pool.take_idle(self.ep)
            if conn is not None:
                self._on_conn(conn, conn.endpoint, "")
                return
        self.pool.acquire(self._on_conn, self.ep, fresh)

    def _on_conn(self, conn: UpstreamConnection | None, ep: Endpoint | None, reason: str) -> None:
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        if conn is None:
            self._connect_failed(ep, reason)
            return
        if self.done:
            self.pool.release(conn, True)
            return
        self.conn, self.ep = conn, conn.endpoint
        self.upstream_addr = conn.endpoint.address
        conn.attach(self)
        self._send_head(conn)
        deadline, self.per_try = response_deadline(
            self.t0, self.now(), route.timeout, route.retries.per_try_timeout
        )
        client = self.client
        client.watch_response(self, deadline)
        client.unblock_read(BLOCK_CONN)
        if client.write_paused:
            conn.pause_reading()

    def _send_head(self, conn: UpstreamConnection) -> None:
        req = self.req
        first = req.method + b" " + self.target + b" HTTP/1.1\r\n"
        if not req.has_host:
            first += b"Host: " + self.ep.address.encode() + b"\r\n"
        body = self.body
        if not body and not req.chunked:  # the common case: one buffer, one send
            conn.transport.write(first + self.head)
        else:
            parts = [first, self.head]
            for data in body or ():
                parts.extend(chunk(data) if req.chunked else (data,))
            if self.req_done and req.chunked:
                parts.append(b"0\r\n\r\n")
            conn.transport.write(b"".join(parts))

    def _connect_failed(self, ep: Endpoint | None, reason: str) -> None:
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        if self.done:
            return
        if ep is not None and reason in (CONNECT_REFUSED, CONNECT_TIMEOUT):
            if reason == CONNECT_REFUSED:
                self.pool.refused(ep)  # ejected at once: the retry picks another endpoint
            else:
                self.pool.report(ep, False)
            self.ep = ep
            if retry_after_connect_failure(*self._retry_inputs()):
                self._retry(fresh=False)
                return
        if route.failover is not None and self._fail_over(reason):
            return
        self.fail(reason)

    # --- retries -----------------------------------------------------------------------------
    def _retry_inputs(self) -> tuple[bytes, int, frozenset[str], bool]:
        """What every retry rule reads: method, attempts left, `retry_on`, body still held."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        return (
            self.req.method,
            self.attempts_left,
            route.retries.retry_on,
            self.body is not None,
        )

    def _retry(self, fresh: bool) -> None:
        self.attempts_left = attempts_after_retry(self.attempts_left)
        self._drop_conn()
        self._attempt(fresh)

    # --- client side events --------------------------------------------------------------------
    def client_body(self, data: bytes) -> None:
        if self.local is not None:
            return
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        self.body_bytes += len(data)
        if self.body_bytes > route.max_body:
            if self.done:  # answered early; the rest is discarded, but not without end
                self.client.abort()
            else:
                self.client_error("body_too_large")
            return
        if self.done:
            return  # the upstream answered before the body ended: read and drop the rest
        conn = self.conn
        if conn is not None:
            conn.transport.writelines(chunk(data) if self.req.chunked else (data,))
        if self.body is not None:
            if conn is None or self.body_bytes <= REPLAY_LIMIT:
                self.body.append(data)
            else:
                self.body = None
            if conn is None and self.body_bytes > REPLAY_LIMIT:
                self.client.block_read(BLOCK_CONN)

    def client_done(self) -> None:
        self.req_done = True
        if self.conn is not None and self.req.chunked and not self.done:
            self.conn.transport.write(b"0\r\n\r\n")
        if self.mirror is not None:
            self._start_mirror()

    def client_error(self, reason: str) -> None:
        """The request stream broke (bad chunk, too large, too slow)."""
        if self.done:
            self.client.abort()  # answered already: only the connection is left to end
            return
        self._drop_conn()
        if self.resp_started:
            self._truncate()
        else:
            self.fail(reason)

    def client_lost(self) -> None:
        if self.done:
            return
        self._drop_conn()
        self.close_after = True
        self.error = "client_closed"
        self._finish(499 if not self.resp_started else self.status)

    # --- upstream side events ------------------------------------------------------------------
    def up_headers(
        self, status: int, headers: list, length: bytes | None, connection: list[bytes]
    ) -> bool:
        if status in RETRY_STATUS and retry_after_status(status, *self._retry_inputs()):
            self._retry(fresh=False)
            return False
        if self.ep.failures:
            self.pool.report(self.ep, True)
        self._cancel_timer()  # the body idle timer is armed after the read, if still needed
        self.status = status
        self.resp_started = True
        self.client.write(self._response_head(status, headers, length, connection))
        # llhttp ends a 204 or 304 itself; another body-less answer (to HEAD) ends at its head.
        return self.mode == NO_BODY and status not in (204, 304)

    def up_switched(
        self, conn: UpstreamConnection, headers: list, connection: list[bytes], rest: bytes
    ) -> None:
        """101 to our upgrade: the connection leaves the pool and becomes a tunnel's end."""
        self._cancel_timer()
        self.conn = None
        conn.closed = True  # released without a close, forgotten: the tunnel owns the socket
        self.pool.release(conn, False)
        self.pool.forget(conn)
        if self.ep.failures:
            self.pool.report(self.ep, True)
        switch(self, conn.transport, headers, connection, rest)

    def up_failed(self, reason: str, got_bytes: bool) -> None:
        conn = self.conn
        if conn is None or self.done:
            return
        if self.resp_started:
            self.error = reason
            self._drop_conn()
            self._truncate()
            return
        reused = conn.requests > 0
        self._drop_conn()
        then = retry_after_reset(
            reason, got_bytes, reused, self.stale_retried, *self._retry_inputs()
        )
        if then == RETRY_FRESH:
            # The upstream closed an idle keep-alive connection just as we reused it.
            self.stale_retried = True
        else:
            self.pool.report(self.ep, False)
        if then != NO_RETRY:
            self._retry(fresh=then == RETRY_FRESH)
            return
        self.fail(reason)

    # --- timers ------------------------------------------------------------------------------
    def response_timeout(self) -> None:
        """The response head did not come in time (called by the client connection)."""
        if self.done or self.resp_started:
            return
        self.pool.report(self.ep, False)
        if retry_after_response_timeout(self.per_try, *self._retry_inputs()):
            self._retry(fresh=False)
            return
        self._drop_conn()
        self.fail("upstream_timeout")

    # --- endings -----------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Answer with a proxy-made error (before any response byte was sent)."""
        if self.done:
            return
        self._cancel_timer()
        self.error = reason
        close = close_after_error(reason, self.req_done, self._must_close())
        self.close_after = self.close_after or close
        code = ERRORS[reason][0] or self.fault_status
        extra = self._failover_field() if self.failover else b""
        self.client.write(error_response(reason, self.close_after, code, extra))
        label = ERRORS[reason][2]
        metrics = self.client.server.metrics
        if label is not None and metrics is not None:
            metrics.upstream_error(self.subset, label)
        self._finish(code)
