"""WebSocket load generator: `python -m benchmarks.ws_load --port P --conns N --seconds S`.

wrk cannot speak WebSocket, so this client does the part of it the benchmark needs, as
cheaply as Python allows, so that the proxy under test and not the tool is the bottleneck:
every connection makes a real upgrade (GET with `Upgrade: websocket`, key, version 13; the
101 and its `Sec-WebSocket-Accept` are checked), then keeps `--inflight` pre-built masked
binary frames outstanding and sends one more for every echoed frame. Nothing is built or
parsed per message: the echoing upstream (`ws_upstream`) answers each client frame with one
pre-built frame of the same payload size, so counting bytes counts messages. The round trip
of every message (send to echo, FIFO per connection) gives the latency percentiles.

Prints one JSON line: messages, seconds, payload bytes echoed, p50/p99/p99.9/max ms, errors.
`run()` starts it pinned to the load CPU and reads that line, as `wrk.run` does for wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks import procs

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK = b"\x37\xfa\x21\x3d"
READ_BUFFER = 256 * 1024  # one read takes several 64 KiB frames: fewer wake-ups per byte


def shared_buffer() -> memoryview:
    """One read buffer for every connection of a process: each read is consumed before the
    loop reads again, and 64 connections then touch 256 KiB of cache, not 64 buffers."""
    global _shared
    if _shared is None:
        _shared = memoryview(bytearray(READ_BUFFER))
    return _shared


_shared: memoryview | None = None


def accept_key(key: bytes) -> bytes:
    """RFC 6455 Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def frame_header(size: int, masked: bool) -> bytes:
    """Header of a final binary frame carrying `size` payload bytes (mask key included)."""
    bit = 0x80 if masked else 0
    if size < 126:
        head = struct.pack("!BB", 0x82, bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x82, bit | 126, size)
    else:
        head = struct.pack("!BBQ", 0x82, bit | 127, size)
    return head + (MASK if masked else b"")


def client_frame(size: int) -> bytes:
    """A masked binary frame of `size` zero bytes (the masked payload is the key repeated)."""
    return frame_header(size, True) + (MASK * (size // 4 + 1))[:size]


def server_frame(size: int) -> bytes:
    """An unmasked binary frame of `size` bytes, as a server sends it."""
    return frame_header(size, False) + b"x" * size


def upgrade_request(port: int, key: bytes) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ) % (port, key)


def check_switch(head: bytes, key: bytes) -> None:
    """Raise unless `head` is a 101 to a WebSocket upgrade with the right accept value."""
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"no 101: {lines[0]!r}")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise ConnectionError(f"101 without Upgrade: websocket: {head!r}")
    if fields.get(b"sec-websocket-accept") != accept_key(key):
        raise ConnectionError(f"wrong Sec-WebSocket-Accept: {head!r}")


class Load(asyncio.BufferedProtocol):
    """One WebSocket connection: upgrade, then `inflight` frames outstanding until told to stop."""

    def __init__(self, run: Run, port: int) -> None:
        self.run = run
        self.port = port
        self.key = base64.b64encode(os.urandom(16))
        self.view = shared_buffer()
        self.head = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.pending = 0  # bytes of a partly received echo
        self.sent: deque[float] = deque()
        self.transport: asyncio.Transport | None = None
        self.checked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(upgrade_request(self.port, self.key))  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if not self.upgraded.done():
            self._handshake(bytes(self.view[:nbytes]))
            return
        self._echoed(nbytes)

    def _handshake(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        try:
            check_switch(self.head[:end], self.key)
        except ConnectionError as e:
            self.upgraded.set_exception(e)
            return
        if len(self.head) > end + 4:
            self.upgraded.set_exception(ConnectionError("bytes before the first frame was sent"))
            return
        self.upgraded.set_result(None)

    def _echoed(self, nbytes: int) -> None:
        run = self.run
        if not self.checked:
            self.checked = True
            if self.view[: len(run.echo_head)] != run.echo_head:
                run.errors["bad_frame"] = run.errors.get("bad_frame", 0) + 1
        total = self.pending + nbytes
        k, self.pending = divmod(total, run.echo_len)
        if not k:
            return
        now = time.perf_counter()
        sent = self.sent
        for _ in range(k):
            run.rtts.append(now - sent.popleft())
        run.messages += k
        if run.stopped:
            return
        assert self.transport is not None
        for _ in range(k):
            sent.append(now)
            self.transport.write(run.frame)

    def start(self) -> None:
        now = time.perf_counter()
        assert self.transport is not None
        for _ in range(self.run.inflight):
            self.sent.append(now)
            self.transport.write(self.run.frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during the upgrade: {exc}"))
        elif not self.run.stopped:
            self.run.errors["closed"] = self.run.errors.get("closed", 0) + 1


@dataclass
class Run:
    """What every connection of one run shares: the frames and the counters."""

    size: int
    inflight: int
    frame: bytes = b""
    echo_head: bytes = b""
    echo_len: int = 0
    messages: int = 0
    stopped: bool = False
    rtts: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frame = client_frame(self.size)
        self.echo_head = frame_header(self.size, False)
        self.echo_len = len(self.echo_head) + self.size


@dataclass
class WsResult:
    messages: int
    seconds: float
    size: int
    rps: float  # messages/s, named as wrk's figure so the common summary applies
    bytes_per_s: float  # payload bytes echoed back per second (the proxy carries twice that)
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non_2xx: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q / 100))]


async def _open(port: int, conns: int, run: Run) -> list[Load]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(conns):  # one at a time: no accept-queue overflow, no SYN retries
        _, proto = await loop.create_connection(lambda: Load(run, port), "127.0.0.1", port)
        await asyncio.wait_for(proto.upgraded, 10)
        out.append(proto)
    return out


async def load(port: int, conns: int, seconds: float, size: int, inflight: int) -> WsResult:
    """Upgrade `conns` connections, then echo for `seconds`; only that window is counted."""
    run = Run(size, inflight)
    links = await _open(port, conns, run)
    began = time.perf_counter()
    for link in links:
        link.start()
    await asyncio.sleep(seconds)
    run.stopped = True
    took = time.perf_counter() - began
    messages = run.messages
    for link in links:
        assert link.transport is not None
        link.transport.close()
    ms = sorted(r * 1000 for r in run.rtts)
    return WsResult(
        messages=messages,
        seconds=took,
        size=size,
        rps=messages / took,
        bytes_per_s=messages * size / took,
        p50_ms=_percentile(ms, 50),
        p99_ms=_percentile(ms, 99),
        p999_ms=_percentile(ms, 99.9),
        max_ms=ms[-1] if ms else 0.0,
        errors=run.errors,
    )


def fast_loop() -> None:
    """uvloop when installed (fewer µs per read/write than asyncio's own loop)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def run(
    port: int, conns: int, seconds: float, size: int, inflight: int, cpu: int | None = 1
) -> WsResult:
    """One run of this client in its own process pinned to `cpu`; raises if it fails."""
    cmd = [sys.executable, "-m", "benchmarks.ws_load", "--port", str(port)]
    cmd += ["--conns", str(conns), "--seconds", str(seconds)]
    cmd += ["--size", str(size), "--inflight", str(inflight)]
    out = subprocess.run(
        procs.pinned(cmd, cpu), capture_output=True, text=True, timeout=seconds + 60
    )
    if out.returncode != 0:
        raise RuntimeError(f"ws_load failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return WsResult(**json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ws_load", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--size", type=int, default=64 * 1024, help="payload bytes per message")
    p.add_argument("--inflight", type=int, default=4, help="messages outstanding per connection")
    a = p.parse_args(argv)
    fast_loop()
    res = asyncio.run(load(a.port, a.conns, a.seconds, a.size, a.inflight))
    print(json.dumps(res.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
