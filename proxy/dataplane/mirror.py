"""Fire-and-forget copies of requests (route `mirror:`).

A copy goes to the mirror Subset's pool once the original request is complete, only when its
body was small enough to keep (`REPLAY_LIMIT`); the answer is read and discarded. A mirror never
delays or fails the real request: no retries, errors are dropped, a timer bounds its life.
"""

from __future__ import annotations

import asyncio

from proxy.dataplane.heads import chunk
from proxy.dataplane.request import Request
from proxy.dataplane.upconn import Handler, UpstreamConnection
from proxy.dataplane.upstream import Endpoint, UpstreamPool


def mirror_payload(
    req: Request, subset: str, head: bytes, body: list[bytes], target: bytes | None = None
) -> list[bytes]:
    """The copy of a whole request for the mirror Subset, framed as the original, to
    `target` (the forwarded one, after a rewrite; default: the request's own)."""
    host = b"" if req.has_host else b"Host: " + subset.encode() + b"\r\n"
    line = req.method + b" " + (target or req.target) + b" HTTP/1.1\r\n"
    payload = [line + host, head]
    for data in body:
        payload.extend(chunk(data) if req.chunked else (data,))
    if req.chunked:
        payload.append(b"0\r\n\r\n")
    return payload


class MirrorExchange(Handler):
    """One copy in flight: its answer is read and dropped (Handler's no-op defaults)."""

    def __init__(self, pool: UpstreamPool, payload: list[bytes], timeout: float) -> None:
        self.pool = pool
        self.payload = payload  # request head and framed body, ready to write
        self.timeout = timeout
        self.conn: UpstreamConnection | None = None
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.pool.acquire(self._on_conn)

    def _on_conn(self, conn: UpstreamConnection | None, ep: Endpoint | None, reason: str) -> None:
        if conn is None:
            return
        self.conn = conn
        conn.attach(self)
        conn.transport.writelines(self.payload)
        if self.timeout > 0:
            self.timer = conn.pool._loop.call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        self.timer = None
        self._end(False)

    def _end(self, reusable: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is not None:
            if not reusable:
                conn.abort()
            self.pool.release(conn, reusable)

    # --- Handler -------------------------------------------------------------------------------
    def up_headers(
        self, status: int, headers: list, length: bytes | None, connection: list[bytes]
    ) -> bool:
        return False

    def up_done(self, reusable: bool) -> None:
        self._end(reusable)

    def up_failed(self, reason: str, got_bytes: bool) -> None:
        self._end(False)
