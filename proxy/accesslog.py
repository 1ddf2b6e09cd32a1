"""Access log: one JSON line per request, buffered, flushed on a timer.

The line is formatted once when the request ends; writes go to a list that a 1 s timer (or a
64 KiB backlog) flushes, so the hot path never blocks on the file.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, Any

FLUSH_EVERY = 1.0
FLUSH_BYTES = 64 * 1024


class AccessLog:
    def __init__(self, target: str) -> None:
        self.target = target
        self._file: IO[str] = sys.stdout if target == "stdout" else open(target, "a")  # noqa: SIM115
        self._buf: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def log(self, ex: Any, route: str, code: int, seconds: float) -> None:
        """Record one finished exchange (an `Exchange` of the data plane)."""
        line = json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                "request_id": ex.request_id.decode("latin-1"),
                "client": ex.client_ip,
                "method": ex.method.decode("latin-1"),
                "path": ex.target.decode("latin-1"),
                "route": route,
                "version": ex.subset,
                "status": code,
                "upstream": ex.upstream_addr,
                "duration_ms": round(seconds * 1000, 3),
                "bytes_sent": ex.bytes_sent,
                "error": ex.error,
            },
            separators=(",", ":"),
        )
        self.write(line)

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
