"""One request/response exchange: decision, upstream attempts, streaming both ways.

An Exchange is created when a request head is complete. It asks the routing table once, then
(when it is first in its connection's pipeline) acquires an upstream connection, writes the
request head and streams the body; the upstream connection calls back with the response head,
body chunks and the end. Flow control is symmetric: a side whose writes back up pauses the
other side's reads. Nothing here awaits: timers are `loop.call_later` handles.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from proxy import headers as hdr
from proxy.dataplane.errors import CLOSING, ERRORS, error_response, status_line
from proxy.dataplane.mirror import MirrorExchange
from proxy.dataplane.types import Client
from proxy.dataplane.upconn import BODY_IDLE_TIMEOUT, UpstreamConnection
from proxy.dataplane.upstream import CONNECT_REFUSED, CONNECT_TIMEOUT, Endpoint, UpstreamPool

if TYPE_CHECKING:
    from proxy.config.schema import HeaderPolicy
    from proxy.routing.table import CompiledRoute

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_LIMIT = 64 * 1024  # a body up to this size is kept so that a retry can resend it
NO_BODY, RAW, CHUNKED, CLOSE = 0, 1, 2, 3
RETRY_STATUS = {502: "502", 503: "503", 504: "504"}
BLOCK_CONN = 4  # client read block: body waits for an upstream connection
_NONE: frozenset[bytes] = frozenset()
# (id(route headers), id(destination headers)) -> (those two values, merged policy)
_POLICIES: dict[tuple[int, int], tuple[HeaderPolicy, HeaderPolicy | None, hdr.Policy]] = {}


class Exchange:
    __slots__ = (
        "client",
        "loop",
        "t0",
        "seq",
        "method",
        "target",
        "http10",
        "keep_alive",
        "headers",
        "content_length",
        "chunked",
        "request_id",
        "client_ip",
        "connection",
        "xff",
        "proto",
        "has_host",
        "expect_continue",
        "route",
        "subset",
        "set_cookie",
        "mirror",
        "pool",
        "conn",
        "ep",
        "local",
        "fault_status",
        "attempts_left",
        "stale_retried",
        "body",
        "body_bytes",
        "req_done",
        "head",
        "policy",
        "sent",
        "resp_started",
        "mode",
        "status",
        "bytes_sent",
        "close_after",
        "done",
        "timer",
        "per_try",
        "upstream_addr",
        "error",
    )

    def __init__(self, client: Client, req: tuple) -> None:
        self.client = client
        self.loop = client.loop
        self.t0 = self.loop.time()
        self.seq = client.requests  # position on its client connection
        # req: see proxy.dataplane.request.REQUEST_FIELDS (a tuple: cheaper than a dict here)
        (
            self.method,
            self.target,
            self.http10,
            self.keep_alive,
            self.headers,
            self.content_length,
            self.chunked,
            self.request_id,
            self.client_ip,
            self.connection,
            self.xff,
            self.proto,
            self.has_host,
            self.local,  # reason of a proxy-made answer (a framing error), else None
        ) = req
        self.expect_continue = False
        # route, pool and ep are set by prepare()/_on_conn() before anything reads them.
        self.route: CompiledRoute = None  # type: ignore[assignment]
        self.subset = ""
        self.set_cookie: str | None = None
        self.mirror: str | None = None
        self.pool: UpstreamPool = None  # type: ignore[assignment]
        self.conn: UpstreamConnection | None = None
        self.ep: Endpoint = None  # type: ignore[assignment]
        self.fault_status = 0
        self.attempts_left = 0
        self.stale_retried = False
        self.body: list[bytes] | None = []
        self.body_bytes = 0
        self.req_done = not self.chunked and not self.content_length
        self.head = b""
        self.policy: hdr.Policy | None = None  # header edits of (route, subset), once known
        self.sent = False  # bytes of this request reached the current upstream connection
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

    # --- decision (at head time, before any body byte is read) ------------------------------
    def prepare(self, table, decide_headers: Mapping[str, str], expect: bytes | None) -> None:
        d = table.decide(
            self.method.decode("latin-1"),
            self.target.decode("latin-1"),
            decide_headers,
            self.client_ip,
            random.random(),
        )
        self.route = route = d.route
        if route is None:
            self.local = "no_route"
            return
        self.subset = d.subset or ""
        self.set_cookie = d.set_cookie
        self.mirror = d.mirror
        if self.content_length is not None and self.content_length > route.max_body:
            self.local = "body_too_large"
        elif expect is not None and expect.lower() != b"100-continue":
            self.local = "expectation_failed"
        elif not self.subset:
            self.local = "no_destination"
        else:
            pool = self.client.server.pools.pool(self.subset)
            if pool is None:
                self.local = "no_destination"
            else:
                self.pool = pool
        self.attempts_left = route.retries.attempts
        self.expect_continue = expect is not None and not self.http10

    # --- start (first in the pipeline) --------------------------------------------------------
    def start(self) -> None:
        if self.done:
            return
        if self.local is not None:
            self.fail(self.local)
            return
        fault = self.route.fault
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
        self.timer = None
        if self.done:
            return
        if self.expect_continue and not self.req_done:
            self.client.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.head = self._build_head()
        self._attempt(fresh=False)
        if self.mirror is not None:
            self._start_mirror()

    def _start_mirror(self) -> None:
        """Send a copy to the mirror Subset once the whole (small) request is known."""
        if self.mirror is None or not self.head or not self.req_done or self.body is None:
            return
        pool = self.client.server.pools.pool(self.mirror)
        mirror, self.mirror = self.mirror, None
        if pool is None:
            return
        host = b"" if self.has_host else b"Host: " + mirror.encode() + b"\r\n"
        payload = [self.method + b" " + self.target + b" HTTP/1.1\r\n" + host, self.head]
        for chunk in self.body:
            payload.extend(self._frame(chunk))
        if self.chunked:
            payload.append(b"0\r\n\r\n")
        MirrorExchange(pool, payload, self.route.timeout).start()
        metrics = self.client.server.metrics
        if metrics is not None:
            metrics.mirrored(self.route.name, mirror)

    def _build_head(self) -> bytes:
        lines = hdr.request_lines(
            self.headers, self.connection, self.xff, self.proto, self.request_id, self._policy()
        )
        if self.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif self.content_length is not None:
            framing = b"Content-Length: %d\r\n" % self.content_length
        else:
            framing = b""
        return lines + framing + b"\r\n"

    def _policy(self) -> hdr.Policy:
        policy = self.policy
        if policy is None:
            policy = self.policy = self._find_policy()
        return policy

    def _find_policy(self) -> hdr.Policy:
        route = self.route
        dest = route.dest_headers.get(self.subset)
        # Keyed by the identity of the (small, immutable) HeaderPolicy values, not of the
        # route: an entry never keeps a whole routing table of an old config alive.
        key = (id(route.headers), id(dest))
        hit = _POLICIES.get(key)
        if hit is not None and hit[0] is route.headers and hit[1] is dest:
            return hit[2]
        if len(_POLICIES) >= 1024:
            _POLICIES.clear()  # configs replaced by many reloads
        found = [route.headers] + ([dest] if dest is not None else [])
        policy = hdr.build_policy(found)
        _POLICIES[key] = (route.headers, dest, policy)
        return policy

    def _attempt(self, fresh: bool) -> None:
        if self.loop.time() - self.t0 >= self.route.timeout > 0:
            self.fail("upstream_timeout")
            return
        self.pool.acquire(self._on_conn, self.ep, fresh)

    def _on_conn(self, conn: UpstreamConnection | None, ep: Endpoint | None, reason: str) -> None:
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
        self._arm_response_timer()
        self.client.unblock_read(BLOCK_CONN)
        if self.client.write_paused:
            conn.pause_reading()

    def _send_head(self, conn: UpstreamConnection) -> None:
        first = self.method + b" " + self.target + b" HTTP/1.1\r\n"
        if not self.has_host:
            first += b"Host: " + self.ep.address.encode() + b"\r\n"
        body = self.body
        if not body and not self.chunked:  # the common case: one buffer, one send
            conn.transport.write(first + self.head)
        else:
            parts = [first, self.head]
            for chunk in body or ():
                parts.extend(self._frame(chunk))
            if self.req_done and self.chunked:
                parts.append(b"0\r\n\r\n")
            conn.transport.write(b"".join(parts))
        self.sent = True

    def _frame(self, chunk: bytes) -> list[bytes]:
        if self.chunked:
            return [b"%x\r\n" % len(chunk), chunk, b"\r\n"]
        return [chunk]

    def _connect_failed(self, ep: Endpoint | None, reason: str) -> None:
        if self.done:
            return
        if ep is not None and reason in (CONNECT_REFUSED, CONNECT_TIMEOUT):
            self.pool.report(ep, False)
            self.ep = ep
            if self._can_retry("connect-failure", sent=False):
                self._retry(fresh=False)
                return
        self.fail(reason)

    # --- retries -----------------------------------------------------------------------------
    def _can_retry(self, cond: str, sent: bool) -> bool:
        if self.attempts_left <= 0 or cond not in self.route.retries.retry_on:
            return False
        if sent and self.method not in IDEMPOTENT:
            return False  # RFC 9110 §9.2.2: never replay a non-idempotent request
        return self.body is not None

    def _retry(self, fresh: bool) -> None:
        self.attempts_left -= 1
        self._drop_conn()
        self._attempt(fresh)

    def _drop_conn(self) -> None:
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
            self.pool.release(conn, False)

    # --- client side events --------------------------------------------------------------------
    def client_body(self, data: bytes) -> None:
        if self.local is not None:
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.route.max_body:
            if self.done:  # answered early; the rest is discarded, but not without end
                self.client.abort()
            else:
                self.client_error("body_too_large")
            return
        if self.done:
            return  # the upstream answered before the body ended: read and drop the rest
        conn = self.conn
        if conn is not None:
            conn.transport.writelines(self._frame(data))
        if self.body is not None:
            if conn is None or self.body_bytes <= REPLAY_LIMIT:
                self.body.append(data)
            else:
                self.body = None
            if conn is None and self.body_bytes > REPLAY_LIMIT:
                self.client.block_read(BLOCK_CONN)

    def client_done(self) -> None:
        self.req_done = True
        if self.conn is not None and self.chunked and not self.done:
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
        cond = RETRY_STATUS.get(status)
        if cond is not None and self._can_retry(cond, sent=True):
            self._retry(fresh=False)
            return False
        if self.ep.failures:
            self.pool.report(self.ep, True)
        self._cancel_timer()  # the body idle timer is armed after the read, if still needed
        self.status = status
        self.resp_started = True
        self.client.write(self._response_head(status, headers, length, connection))
        return self.mode == NO_BODY and status not in (204, 304)

    def _response_head(
        self, status: int, headers: list, length: bytes | None, connection: list[bytes]
    ) -> bytes:
        nominated = _nominated(connection) if connection else _NONE
        lines = hdr.response_lines(headers, nominated, self._policy(), self.set_cookie)
        framing = self._framing(status, length)
        self.close_after = self.close_after or self.client.must_close(self)
        if self.close_after:
            framing += b"Connection: close\r\n"
        elif self.http10:
            framing += b"Connection: keep-alive\r\n"
        return status_line(status) + lines + framing + b"\r\n"

    def _framing(self, status: int, length: bytes | None) -> bytes:
        if status in (204, 304) or status < 200:
            self.mode = NO_BODY
            return b""
        if self.method == b"HEAD":
            self.mode = NO_BODY
            return b"Content-Length: " + length + b"\r\n" if length is not None else b""
        if length is not None:
            self.mode = RAW
            return b"Content-Length: " + length + b"\r\n"
        if self.http10:
            self.mode = CLOSE
            self.close_after = True
            return b""
        self.mode = CHUNKED
        return b"Transfer-Encoding: chunked\r\n"

    def up_body(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        if self.mode == CHUNKED:
            self.client.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.client.write(data)

    def up_done(self, reusable: bool) -> None:
        if self.done:
            self._cancel_timer()
        if self.mode == CHUNKED:
            self.client.write(b"0\r\n\r\n")
        conn, self.conn = self.conn, None
        # An answer before the request body ended (e.g. nginx `return`): the client side keeps
        # reading and dropping the rest of the body; the upstream connection is not reused.
        if conn is not None:
            self.pool.release(conn, reusable and self.req_done)
        self._finish(self.status)

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
        if reason == "upstream_reset" and not got_bytes and reused and not self.stale_retried:
            if self.method in IDEMPOTENT and self.body is not None:
                # The upstream closed an idle keep-alive connection just as we reused it.
                self.stale_retried = True
                self.attempts_left = max(1, self.attempts_left)
                self._retry(fresh=True)
                return
        self.pool.report(self.ep, False)
        if reason == "upstream_reset" and self._can_retry("reset", sent=True):
            self._retry(fresh=False)
            return
        self.fail(reason)

    def up_cork(self) -> None:
        client = self.client
        if client.corked is None:  # inlined ClientConnection.cork: once per upstream read
            client.corked = []

    def up_uncork(self) -> None:
        self.client.uncork()
        if self.resp_started and not self.done and self.timer is None:
            # Only a body that outlives one read needs the inactivity timer.
            self.timer = self.loop.call_later(BODY_IDLE_TIMEOUT, self._body_idle)

    def up_pause(self) -> None:
        self.client.block_read(1)

    def up_resume(self) -> None:
        self.client.unblock_read(1)

    # --- timers ------------------------------------------------------------------------------
    def _arm_response_timer(self) -> None:
        route = self.route
        now = self.loop.time()
        left = self.t0 + route.timeout - now if route.timeout > 0 else 1e9
        per_try = route.retries.per_try_timeout or 0.0
        self.per_try = 0 < per_try < left
        delay = per_try if self.per_try else left
        self.client.watch_response(self, now + max(delay, 0.0))

    def response_timeout(self) -> None:
        """The response head did not come in time (called by the client connection)."""
        if self.done or self.resp_started:
            return
        self.pool.report(self.ep, False)
        if self.per_try and self._can_retry("504", sent=True):
            self._retry(fresh=False)
            return
        self._drop_conn()
        self.fail("upstream_timeout")

    def _body_idle(self) -> None:
        self.timer = None
        conn = self.conn
        if conn is None or self.done:
            return
        idle = self.loop.time() - conn.last_read
        if idle < BODY_IDLE_TIMEOUT or self.client.write_paused:
            self.timer = self.loop.call_later(BODY_IDLE_TIMEOUT - idle + 0.01, self._body_idle)
            return
        self.error = "upstream_timeout"
        self._drop_conn()
        self._truncate()

    def _cancel_timer(self) -> None:
        client = self.client
        if client.resp_ex is self:
            client.resp_ex = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- endings -----------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Answer with a proxy-made error (before any response byte was sent)."""
        if self.done:
            return
        self._cancel_timer()
        self.error = reason
        close = reason in CLOSING or not self.req_done or self.client.must_close(self)
        self.close_after = self.close_after or close
        code = ERRORS[reason][0] or self.fault_status
        self.client.write(error_response(reason, self.close_after, code))
        label = ERRORS[reason][2]
        metrics = self.client.server.metrics
        if label is not None and metrics is not None:
            metrics.upstream_error(self.subset, label)
        self._finish(code)

    def _truncate(self) -> None:
        """The response cannot be completed: close the client without a clean end."""
        self.close_after = True
        self.client.abort()
        self._finish(self.status)

    def _finish(self, code: int) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_timer()
        seconds = self.loop.time() - self.t0
        self.client.server.record(self, code, seconds)
        self.client.finished(self)


_NOMINATED: dict[tuple[bytes, ...], frozenset[bytes]] = {}


def _nominated(connection: list[bytes]) -> frozenset[bytes]:
    """`hdr.nominated`, cached: upstreams send the same `Connection: keep-alive` every time."""
    key = tuple(connection)
    hit = _NOMINATED.get(key)
    if hit is None:
        if len(_NOMINATED) >= 256:
            _NOMINATED.clear()  # an upstream inventing values: keep the cache bounded
        hit = _NOMINATED[key] = hdr.nominated(connection)
    return hit
