"""The response side of an exchange: head, body and end, streamed to the client.

`ResponseStream` is the base of `proxy.dataplane.exchange.Exchange` and holds the state the
response needs. Writes go through the client's cork, so one upstream read becomes one send;
an upstream whose reads outrun the client is paused (and the client's reads while the upstream
cannot take more). A body that outlives one read is watched for inactivity.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from proxy import headers as hdr
from proxy.dataplane.clientio import ClientIO
from proxy.dataplane.errors import status_line
from proxy.dataplane.heads import NONE
from proxy.dataplane.heads import nominated as _nominated
from proxy.dataplane.request import Request
from proxy.dataplane.rules import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE
from proxy.dataplane.upconn import BODY_IDLE_TIMEOUT, Handler, UpstreamConnection
from proxy.dataplane.upstream import UpstreamPool

_status_line: Final = status_line  # a static in the compiled build, not a global lookup


class ResponseStream(Handler):
    __slots__ = (
        "client",
        "loop",
        "now",
        "t0",
        "seq",
        "req",
        "pool",
        "conn",
        "policy",
        "set_cookie",
        "req_done",
        "resp_started",
        "mode",
        "status",
        "bytes_sent",
        "close_after",
        "done",
        "timer",
        "error",
    )
    # Set by Exchange.__init__ (declared here for the type checker).
    client: ClientIO[Any]
    loop: asyncio.AbstractEventLoop
    now: Callable[[], float]  # the client connection's loop.time
    t0: float  # loop time the request head was complete
    seq: int  # position on its client connection
    req: Request
    pool: UpstreamPool
    conn: UpstreamConnection | None
    policy: hdr.Policy  # header edits of (route, subset)
    set_cookie: str | None
    req_done: bool  # the request body was read to its end
    resp_started: bool  # the response head went to the client
    mode: int  # rules.NO_BODY | LENGTH | CHUNKED | UNTIL_CLOSE
    status: int
    bytes_sent: int
    close_after: bool  # the client connection closes after this exchange
    done: bool
    timer: asyncio.TimerHandle | None  # fault delay, then the body inactivity timer
    error: str  # the failure reason logged, "" when none

    def _response_head(
        self, status: int, headers: list, length: bytes | None, connection: list[bytes]
    ) -> bytes:
        """The head sent to the client. Its framing, whether the connection closes after it
        and its Connection field are `rules.response_framing`, `rules.must_close` and
        `rules.connection_field`, inlined: this runs for every response, and the three calls
        cost ~1 % of the instructions of a small proxied GET. Keep it in step with them."""
        req = self.req
        nominated = _nominated(connection) if connection else NONE
        parts = [_status_line(status)]  # one join for the whole head
        hdr.add_response_lines(parts, headers, nominated, self.policy, self.set_cookie)
        if status in (204, 304) or status < 200:  # response_framing
            mode = NO_BODY
        elif length is not None:  # the length is sent for HEAD too, with no body after it
            mode = NO_BODY if req.method == b"HEAD" else LENGTH
            parts.append(b"Content-Length: ")
            parts.append(length)
            parts.append(b"\r\n")
        elif req.method == b"HEAD":
            mode = NO_BODY
        elif req.http10:
            mode = UNTIL_CLOSE
        else:
            mode = CHUNKED
            parts.append(b"Transfer-Encoding: chunked\r\n")
        self.mode = mode
        client = self.client
        close = (  # must_close, unless the exchange decided already
            self.close_after
            or not req.keep_alive
            or mode == UNTIL_CLOSE
            or client.server.draining
            or self.seq >= client.limits.keepalive_requests
            or (client.closing and len(client.queue) <= 1)
        )
        self.close_after = close
        if close:  # connection_field
            parts.append(b"Connection: close\r\n\r\n")
        elif req.http10:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    # --- upconn.Handler ------------------------------------------------------------------------
    def up_body(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        if self.mode == CHUNKED:
            self.client.writelines([b"%x\r\n" % len(data), data, b"\r\n"])  # heads.chunk
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

    # --- endings -----------------------------------------------------------------------------
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

    def _drop_conn(self) -> None:
        self._cancel_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
            self.pool.release(conn, False)

    def _cancel_timer(self) -> None:
        client = self.client
        if client.resp_ex is self:
            client.resp_ex = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

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
        seconds = self.now() - self.t0
        self.client.server.record(self, code, seconds)
        self.client.finished(self)
