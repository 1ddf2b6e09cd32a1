"""A recording upstream for the fault suite: a raw asyncio HTTP/1.1 server.

It logs, as JSON lines flushed one by one, every chunk of raw bytes it receives
(`{"kind": "raw", ...}`) and every request it parsed (`{"kind": "req", ...}` with
the `x-req-id` header), so a test can prove what reached the upstream: no second
request from one client request, no smuggled request line, no duplicated POST.
It runs as its own process so a test can `kill -9` and restart it.

    python tests/fault/upstream.py --name v1 --log FILE [--port 0]

prints `READY <port>` once listening. `GET /slow?ms=N` answers after N ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import signal
import sys
import time
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import httptools

_conn_ids = itertools.count(1)


class Recorder:
    """Appends one JSON object per line and flushes, so a killed process loses nothing."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def write(self, record: dict[str, Any]) -> None:
        record["t"] = time.time()
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()


class RecordingProtocol(asyncio.Protocol):
    """One upstream connection: parse with llhttp, record, answer 200 (keep-alive)."""

    def __init__(self, name: str, recorder: Recorder) -> None:
        self.name = name
        self.rec = recorder
        self.conn = next(_conn_ids)
        self.parser = httptools.HttpRequestParser(self)
        # Parse like a lax backend (TE wins over CL, bare LF, odd header bytes): the
        # more forgiving the upstream, the more surely a desync shows up in its log.
        self.parser.set_dangerous_leniencies(
            lenient_headers=True,
            lenient_chunked_length=True,
            lenient_optional_cr_before_lf=True,
            lenient_spaces_after_chunk_size=True,
        )
        self.transport: asyncio.Transport | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        raw = base64.b64encode(data).decode()
        self.rec.write({"kind": "raw", "conn": self.conn, "raw": raw})
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.rec.write({"kind": "parse_error", "conn": self.conn, "error": str(exc)})
            self._send(400, b"upstream parse error", close=True)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        url = self.url.decode("latin-1")
        rid = next((v for k, v in self.headers if k.lower() == "x-req-id"), "")
        self.rec.write(
            {
                "kind": "req",
                "conn": self.conn,
                "upstream": self.name,
                "method": method,
                "url": url,
                "headers": self.headers,
                "body_len": len(self.body),
                "rid": rid,
            }
        )
        keep = self.parser.should_keep_alive()
        delay = _slow_ms(url) / 1000.0
        self._reset_message()
        body = f"ok {self.name} {method} {url}\n".encode("latin-1", "replace")
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, 200, body, not keep)
        else:
            self._send(200, body, close=not keep)

    def _send(self, status: int, body: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"X-Upstream: {self.name}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()


def _slow_ms(url: str) -> float:
    parts = urlsplit(url)
    if parts.path != "/slow":
        return 0.0
    try:
        return float(parse_qs(parts.query).get("ms", ["0"])[0])
    except ValueError:
        return 0.0


async def serve(name: str, port: int, log_path: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    with open(log_path, "a", encoding="utf-8") as out:
        rec = Recorder(out)
        server = await loop.create_server(
            lambda: RecordingProtocol(name, rec), "127.0.0.1", port, reuse_address=True
        )
        bound = server.sockets[0].getsockname()[1]
        print(f"READY {bound}", flush=True)
        await stop
        server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", default="v1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True)
    args = p.parse_args(argv)
    asyncio.run(serve(args.name, args.port, args.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
