"""The client connection's deadlines and lingering close (mixed into `ClientConnection`).

One lazy timer per connection watches the idle, request-head and response-head deadlines: it
wakes at most every `period` and re-arms itself, so a busy keep-alive connection creates no
timer per request. The body timer exists only while a request body is read (and doubles as
the lingering-close timer once the connection is closing).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from proxy.config.schema import Limits
from proxy.dataplane.listening import ServerState
from proxy.dataplane.parse import RequestHeadParser
from proxy.dataplane.types import TimedExchange

LINGER: Final = 5.0  # seconds an error-closed connection drains the client's unread bytes


E = TypeVar("E", bound=TimedExchange)


class ClientTimers(RequestHeadParser, Generic[E]):
    """Deadline handling of a client connection; the state lives on the connection."""

    # Set by ClientConnection.__init__ (declared here for the type checker).
    server: ServerState
    loop: asyncio.AbstractEventLoop
    now: Callable[[], float]  # loop.time, bound once per connection
    limits: Limits
    transport: asyncio.Transport
    queue: deque[E]
    parsing: E | None
    in_head: bool
    closing: bool
    closed: bool
    blocks: int
    timer: asyncio.TimerHandle | None
    deadline_kind: str | None
    deadline: float
    period: float
    resp_ex: E | None
    resp_deadline: float
    body_timer: asyncio.TimerHandle | None
    last_body: float

    def reject(self, reason: str) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def _linger(self) -> None:
        """Lingering close after an error answer (as nginx's lingering_close): send FIN, then
        read and drop what the client still sends for up to LINGER seconds. Closing with
        unread bytes would make the kernel send a reset, and the client could lose the
        answer before reading it."""
        t = self.transport
        if not t.can_write_eof():
            t.close()
            return
        t.write_eof()
        self.blocks = 0
        t.resume_reading()
        if self.body_timer is not None:
            self.body_timer.cancel()
        self.body_timer = self.loop.call_later(LINGER, t.close)

    # --- deadlines ------------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        if self.server.draining:
            self.closed = True
            self.transport.close()
            return
        self._set_deadline("idle", self.limits.keepalive_timeout)

    def _set_deadline(self, kind: str | None, seconds: float) -> None:
        self.deadline_kind = kind
        self.deadline = self.now() + seconds
        if self.timer is None and kind is not None:
            self.timer = self.loop.call_later(min(seconds, self.period), self._tick)

    def watch_response(self, ex: E, deadline: float) -> None:
        """`ex` times out at `deadline` (loop time) unless `unwatch_response` comes first.

        The connection's one lazy timer serves this too: a keep-alive connection whose
        responses come in time creates no timer per request.
        """
        self.resp_ex = ex
        self.resp_deadline = deadline
        t = self.timer
        if t is None or t.when() > deadline:
            if t is not None:
                t.cancel()
            self.timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        ex = self.resp_ex
        if ex is not None and now >= self.resp_deadline:
            self.resp_ex = None
            ex.response_timeout()
        kind = self.deadline_kind
        if kind is not None and now >= self.deadline and not self.closed:
            self.deadline_kind = None
            if kind == "head":
                self._header_timeout()
            else:
                self._idle_timeout()
        if self.timer is None and not self.closed:
            self._rearm(now)

    def _rearm(self, now: float) -> None:
        wake = now + self.period
        if self.deadline_kind is not None:
            wake = min(wake, self.deadline)
        elif self.resp_ex is None:
            return  # nothing to watch: the next deadline set arms the timer again
        if self.resp_ex is not None:
            wake = min(wake, self.resp_deadline)
        self.timer = self.loop.call_at(wake, self._tick)

    def _idle_timeout(self) -> None:
        if not self.queue and self.parsing is None and not self.in_head:
            self.closing = True
            self.closed = True
            self.transport.close()

    def close_if_idle(self) -> None:
        if not self.queue and self.parsing is None and not self.in_head and not self.closed:
            self.closed = True
            self.transport.close()

    def _header_timeout(self) -> None:
        if self.parsing is None and not self.closing:
            self.reject("request_timeout")

    def _body_check(self) -> None:
        self.body_timer = None
        ex = self.parsing
        if ex is None or self.closed:
            return
        limit = self.limits.body_timeout
        idle = self.loop.time() - self.last_body
        if self.blocks:
            idle = 0.0  # we stopped reading: the client is not the slow one
            self.last_body = self.loop.time()
        if idle >= limit:
            self.parsing = None
            self._stop_reading()
            ex.client_error("request_timeout")
            return
        self.body_timer = self.loop.call_later(limit - idle, self._body_check)
