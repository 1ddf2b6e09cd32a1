"""One keep-alive connection to an upstream endpoint: asyncio.Protocol + httptools.

The connection parses responses and hands events to its current `handler` (the request being
served). It refuses what an upstream must not send (RELIABILITY.md rows 3, 16, 17): more than
100 header fields, duplicate Content-Length, Content-Length with Transfer-Encoding, an invalid
status line, 101 to a non-upgrade request, bytes while idle. Any of these marks the connection
unusable: it is closed, never reused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final, Protocol

import httptools

from proxy.headers import lower_name

MAX_RESPONSE_HEADERS: Final = 100
BODY_IDLE_TIMEOUT: Final = 60.0


class Handler:
    """What a connection reports to the request it serves: the base of the exchange's
    response side (stream.ResponseStream) and of a mirror copy (mirror.MirrorExchange). A
    native base in the compiled build: the connection's calls to it are direct."""

    __slots__ = ()

    def up_headers(
        self, status: int, headers: list, length: bytes | None, connection: list[bytes]
    ) -> bool:
        """Response head parsed; return True when the response has no body (HEAD).

        `length`: the Content-Length value if any; `connection`: the Connection values.
        """
        raise NotImplementedError

    def up_done(self, reusable: bool) -> None:
        raise NotImplementedError

    def up_failed(self, reason: str, got_bytes: bool) -> None:
        raise NotImplementedError

    def up_body(self, data: bytes) -> None:
        """A piece of the response body (dropped unless overridden)."""

    def up_pause(self) -> None:
        """The connection's writes are backed up (nothing to do unless overridden)."""

    def up_resume(self) -> None:
        """They drained again."""

    def up_cork(self) -> None:
        """A read from the upstream begins: its callbacks' writes may be collected."""

    def up_uncork(self) -> None:
        """The read ended: what was collected goes out."""


class ConnPool(Protocol):
    """What a connection needs of the pool that opened it (dataplane.upstream.UpstreamPool)."""

    @property
    def _loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def ssl(self) -> ssl.SSLContext | None: ...  # set: the pool speaks TLS

    def forget(self, conn: UpstreamConnection) -> None: ...


class Endpoint:
    """One host:port of a Subset, with its health and its idle connections (LIFO)."""

    __slots__ = (
        "address",
        "host",
        "port",
        "healthy",
        "ejected_until",
        "failures",
        "ejections",
        "idle",
        "active",
    )

    def __init__(self, address: str, healthy: bool = True) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.healthy = healthy
        self.ejected_until = 0.0
        self.failures = 0
        self.ejections = 0
        self.idle: list[UpstreamConnection] = []
        self.active = 0

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now


class _Abort(Exception):
    """Raised inside parser callbacks to stop parsing a broken response."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: ConnPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.loop = pool._loop  # made inside the running loop (UpstreamPool._open)
        self.now = self.loop.time  # bound once: no method lookup per read
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.handler: Handler | None = None
        self.closed = False
        self.pool_owned = True
        self.got_bytes = False
        self.requests = 0  # served on this connection: >0 means "reused" for the next one
        self.idle_since = 0.0
        self.last_read = 0.0
        self._headers: list = []
        self._cl = 0
        self._length: bytes | None = None
        self._connection: list[bytes] = []
        self._te = False
        self._informational = False
        self._in_body = False
        self._no_body = False
        self._reusable = True
        self._paused = False
        self._switched = False  # a 101 to an upgrade request: the rest goes to a tunnel

    # --- pool side ---------------------------------------------------------------------------
    def usable(self, now: float, idle_timeout: float) -> bool:
        return not self.closed and now - self.idle_since < idle_timeout

    def attach(self, handler: Handler) -> None:
        self.handler = handler
        self.got_bytes = False
        self._reusable = True
        if self._paused:  # the previous client may have paused us just before the end
            self.resume_reading()
        self.last_read = self.now()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (client went away, protocol error)."""
        self.handler = None
        self._reusable = False
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # --- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool:
        """A response without Content-Length or chunking ends when the upstream closes."""
        if self.handler is not None and self._in_body and self._length is None and not self._te:
            self._no_body = False
            self._finish(reusable=False)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        handler, self.handler = self.handler, None
        self.pool.forget(self)
        if handler is not None:
            # TLS 1.3 ends the handshake before the server checks a client certificate: a
            # refusal arrives as an alert on the first read of a new connection, or as the
            # reset that follows it when the server closes with our request unread.
            first = not self.requests and not self.got_bytes
            refused = isinstance(exc, ssl.SSLError) or (
                isinstance(exc, ConnectionResetError) and self.pool.ssl is not None
            )
            tls = first and refused
            handler.up_failed("upstream_tls" if tls else "upstream_reset", self.got_bytes)
        # The parser holds bound methods of this protocol: without it the connection is
        # freed by reference counting, not by the next full gc pass.
        self.parser = None  # type: ignore[assignment]

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.up_pause()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.up_resume()

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            self.abort()  # bytes nobody asked for: the stream is out of sync
            return
        self.got_bytes = True
        self.last_read = self.now()
        handler = self.handler
        handler.up_cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0] :])
        except (httptools.HttpParserError, _Abort):
            self._fail("upstream_bad_response")
        finally:
            handler.up_uncork()

    def _switch(self, rest: bytes) -> None:
        handler, self.handler = self.handler, None
        switched = getattr(handler, "up_switched", None)
        if not self._switched or switched is None:
            self.handler = handler
            self._fail("upstream_bad_response")
            return
        self.parser = None  # type: ignore[assignment]  # no more HTTP on this connection
        switched(self, self._headers, self._connection, rest)

    def _fail(self, reason: str) -> None:
        handler = self.handler
        self.abort()
        if handler is not None:
            handler.up_failed(reason, True)

    # --- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._no_body = False
        self._in_body = False
        self._headers = []
        self._cl = 0
        self._length = None
        self._connection = []
        self._te = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = lower_name(name)
        if lname == b"content-length":
            self._cl += 1
            if self._cl > 1 or self._te:
                raise _Abort
            self._length = value.strip(b" \t")
        elif lname == b"connection":
            self._connection.append(value)
        elif lname == b"transfer-encoding":
            self._te = True
            if self._cl:
                raise _Abort
        self._headers.append((lname, name, value))
        if len(self._headers) > MAX_RESPONSE_HEADERS:
            raise _Abort

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self._informational = 100 <= status < 200
        if status == 101:
            if getattr(self.handler, "upgrade", None) is None:
                raise _Abort  # an upgrade we did not ask for
            self._switched = True
            return
        if self._informational or self.handler is None:
            return  # 1xx before the real response: not forwarded
        h = self.handler
        self._in_body = True
        self._no_body = h.up_headers(status, self._headers, self._length, self._connection)
        if self._no_body:
            self._finish(reusable=not self._te and self._length in (None, b"0"))

    def on_body(self, body: bytes) -> None:
        if self.handler is not None and not self._no_body:
            self.handler.up_body(body)

    def on_message_complete(self) -> None:
        if self._switched:
            return
        if self._informational:
            self._informational = False
            return
        if self._no_body:
            self._no_body = False
            return
        self._finish(reusable=self.parser.should_keep_alive())

    def _finish(self, reusable: bool) -> None:
        """The response ended; the handler gives the connection back to the pool."""
        self._in_body = False
        handler, self.handler = self.handler, None
        self.requests += 1
        if self._no_body:
            # A body-less response (HEAD) leaves llhttp expecting a body: start afresh.
            self.parser = httptools.HttpResponseParser(self)
        if handler is not None:
            handler.up_done(reusable and self._reusable and not self.closed)
