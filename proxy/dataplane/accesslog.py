"""Access log: one JSON line per request, buffered, flushed on a timer.

The line is formatted once when the request ends; writes go to a list that a 1 s timer (or a
64 KiB backlog) flushes, so the hot path never blocks on the file.

Keys, in this order: `time`, `request_id`, `client`, `method`, `path` (the target as
received, also after a rewrite), `route`, `version` ("" for an answer the proxy made
without a version: 404 no_route, 503 no_destination, a redirect or direct response),
`status`, `upstream` (host:port), `duration_ms`, `bytes_sent`, `error` (the reason of a
proxy-made error, else ""). Two more only when they apply: `rewritten` - what a route's
`rewrite` changed in the forwarded request, `{"path": "/new/x?q=1", "host": "shop.internal"}`
(each key only when changed) - and `failover` - `"v2->v1"` when the request left its version.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

FLUSH_EVERY = 1.0
FLUSH_BYTES = 64 * 1024


def quote(value: str | None) -> str:
    """A JSON string (or null); the common all-printable-ASCII case skips the encoder."""
    if value is None:
        return "null"
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return '"' + value + '"'
    return json.dumps(value)


def _extra(ex: Any) -> str:
    """The `rewritten` and `failover` keys of one line (module docstring)."""
    out = ""
    rw = ex.route.rewrite if ex.route is not None else None
    if rw is not None and ex.head:  # a request line went out (or was ready to)
        parts = []
        if ex.target is not ex.req.target:
            parts.append(f'"path":{quote(ex.target.decode("latin-1"))}')
        if rw.host is not None:
            parts.append(f'"host":{quote(rw.host)}')
        out += ',"rewritten":{' + ",".join(parts) + "}"
    if ex.failover:
        out += f',"failover":{quote(ex.failover)}'
    return out


class AccessLog:
    """JSON lines with a fixed key order. Built by formatting, not `json.dumps` of a dict:
    values from the config (route, version) and the peer are quoted once and cached, the
    timestamp once a second, so a line costs a few string operations per request."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[str] = sys.stdout if target == "stdout" else open(target, "a")  # noqa: SIM115
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._quoted: dict[str | None, str] = {}

    def _q(self, value: str | None) -> str:
        """Quote a value from a small set (route, version, client, upstream, reason)."""
        out = self._quoted.get(value)
        if out is None:
            if len(self._quoted) > 4096:
                self._quoted.clear()
            out = self._quoted[value] = quote(value)
        return out

    def _time(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime('"%Y-%m-%dT%H:%M:%SZ"', time.gmtime(now))
        return self._stamp

    def log(self, ex: Any, route: str, code: int, seconds: float) -> None:
        """Record one finished exchange (an `Exchange` of the data plane)."""
        q = self._q
        req = ex.req
        line = (
            f'{{"time":{self._time()},'
            f'"request_id":{quote(req.request_id.decode("latin-1"))},'
            f'"client":{q(req.client_ip)},'
            f'"method":{quote(req.method.decode("latin-1"))},'
            f'"path":{quote(req.target.decode("latin-1"))},'
            f'"route":{q(route)},"version":{q(ex.subset)},"status":{code},'
            f'"upstream":{q(ex.upstream_addr)},"duration_ms":{seconds * 1000:.3f},'
            f'"bytes_sent":{ex.bytes_sent},"error":{q(ex.error)}'
        )
        cr = ex.route
        if ex.failover or (cr is not None and cr.rewrite is not None):
            line += _extra(ex)
        self.write(line + "}")

    def write(self, line: str) -> None:
        self._buf.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buf:
            self._file.write("\n".join(self._buf) + "\n")
            self._file.flush()
            self._buf = []
            self._size = 0

    def close(self) -> None:
        self.flush()
        if self._file is not sys.stdout:
            self._file.close()
