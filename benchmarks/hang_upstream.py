"""Upstreams of known capacity for the overload runs, in one process (uvloop, raw Protocols).

    python -m benchmarks.hang_upstream --capped-port P --hang-port Q --stats-port S
        [--concurrency 20] [--service-ms 20]

- capped: an app server with `--concurrency` workers. Each request holds one worker for
  `--service-ms`, then gets `200 ok` (keep-alive); requests beyond that wait in its own
  FIFO queue. Capacity = concurrency / service time.
- hang: accepts, reads requests, never answers (a hung backend).
- stats: `GET /` answers JSON counters for both: connections accepted, open now, most open
  at once, requests read, most requests outstanding at once (served or hung).

Port 0 picks a free port; prints `READY <capped> <hang> <stats>` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.ws_load import fast_loop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Counters:
    conns_total: int = 0
    conns_open: int = 0
    conns_open_max: int = 0
    requests: int = 0
    outstanding: int = 0
    outstanding_max: int = 0

    def opened(self) -> None:
        self.conns_total += 1
        self.conns_open += 1
        self.conns_open_max = max(self.conns_open_max, self.conns_open)

    def request(self) -> None:
        self.requests += 1
        self.outstanding += 1
        self.outstanding_max = max(self.outstanding_max, self.outstanding)


class Workers:
    """`n` workers of fixed service time; a FIFO of waiting requests."""

    def __init__(self, n: int, service: float, counters: Counters) -> None:
        self.free = n
        self.service = service
        self.waiting: deque[Capped] = deque()
        self.c = counters
        self.loop = asyncio.get_running_loop()

    def submit(self, conn: Capped) -> None:
        if self.free:
            self.free -= 1
            self.loop.call_later(self.service, self.done, conn)
        else:
            self.waiting.append(conn)

    def done(self, conn: Capped) -> None:
        self.c.outstanding -= 1
        conn.answer()
        if self.waiting:
            self.loop.call_later(self.service, self.done, self.waiting.popleft())
        else:
            self.free += 1


class Reader(asyncio.Protocol):
    """Splits the byte stream into request heads (bodies by Content-Length)."""

    def __init__(self, counters: Counters) -> None:
        self.c = counters
        self.buf = b""
        self.hung = 0  # requests read on this connection and never answered
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.c.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self.c.conns_open -= 1
        self.c.outstanding -= self.hung
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            size = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    size = int(value)
            if len(self.buf) < end + 4 + size:
                return
            self.buf = self.buf[end + 4 + size :]
            self.c.request()
            self.on_request()

    def on_request(self) -> None:
        """Hang: read it, never answer."""
        self.hung += 1


class Capped(Reader):
    def __init__(self, counters: Counters, workers: Workers) -> None:
        super().__init__(counters)
        self.workers = workers

    def on_request(self) -> None:
        self.workers.submit(self)

    def answer(self) -> None:
        if self.transport is not None:
            self.transport.write(OK)


class Stats(asyncio.Protocol):
    def __init__(self, counters: dict[str, Counters]) -> None:
        self.counters = counters

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" not in data:
            return
        body = json.dumps({k: asdict(v) for k, v in self.counters.items()}).encode()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()


async def serve(a: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    counters = {"capped": Counters(), "hang": Counters()}
    workers = Workers(a.concurrency, a.service_ms / 1000, counters["capped"])
    servers: list[Any] = [
        await loop.create_server(
            lambda: Capped(counters["capped"], workers), "127.0.0.1", a.capped_port, backlog=4096
        ),
        await loop.create_server(
            lambda: Reader(counters["hang"]), "127.0.0.1", a.hang_port, backlog=4096
        ),
        await loop.create_server(lambda: Stats(counters), "127.0.0.1", a.stats_port),
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    print("READY", *ports, flush=True)
    await stop
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hang_upstream", description=__doc__)
    p.add_argument("--capped-port", type=int, default=0)
    p.add_argument("--hang-port", type=int, default=0)
    p.add_argument("--stats-port", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--service-ms", type=float, default=20.0)
    a = p.parse_args(argv)
    fast_loop()
    asyncio.run(serve(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
