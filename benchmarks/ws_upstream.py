"""WebSocket echo upstream: `python -m benchmarks.ws_upstream --ports P1,P2`.

Two ports, subsets `v1` and `v2`, so the proxies' usual 95/5 split applies to upgrades too.
Each connection gets a real handshake (101 with the RFC 6455 `Sec-WebSocket-Accept`); the
first client frame's header gives the frame length, and from then on every complete client
frame of that length is answered with one pre-built unmasked frame of the same payload size.
That is echo semantics without unmasking or copying payloads: the load generator sends
identical frames, so the upstream costs a read and a write per message and stays well below
the proxy under test on the load CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys

from benchmarks.ws_load import accept_key, fast_loop, server_frame, shared_buffer

_frames: dict[int, bytes] = {}


def answer_for(size: int) -> bytes:
    """The pre-built server frame for a payload size (built once per size)."""
    frame = _frames.get(size)
    if frame is None:
        frame = _frames[size] = server_frame(size)
    return frame


def client_frame_len(head: bytes) -> int | None:
    """Length of the whole client frame whose first bytes are `head`, None if too short."""
    if len(head) < 2:
        return None
    n = head[1] & 0x7F
    mask = 4 if head[1] & 0x80 else 0
    if n < 126:
        return 2 + mask + n
    if n == 126:
        return None if len(head) < 4 else 4 + mask + struct.unpack("!H", head[2:4])[0]
    return None if len(head) < 10 else 10 + mask + struct.unpack("!Q", head[2:10])[0]


def switching(head: bytes) -> bytes:
    """The 101 for an upgrade request's head; a 400 when it has no Sec-WebSocket-Key."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(value) + b"\r\n\r\n"
            )
    return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Echo(asyncio.BufferedProtocol):
    """One upgraded connection: count client bytes, answer each complete frame."""

    def __init__(self) -> None:
        self.view = shared_buffer()
        self.head = b""  # the request head, then the first frame's header bytes
        self.upgraded = False
        self.frame_len = 0
        self.answer = b""
        self.pending = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.frame_len:
            self._frames(nbytes)
            return
        self.head += bytes(self.view[:nbytes])
        if not self.upgraded:
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            reply = switching(self.head[:end])
            assert self.transport is not None
            self.transport.write(reply)
            if b" 101 " not in reply[:16]:
                self.transport.close()
                return
            self.upgraded, self.head = True, self.head[end + 4 :]
        length = client_frame_len(self.head)
        if length is None:
            return
        self.frame_len, self.answer = length, answer_for(payload_size(self.head))
        early, self.head = len(self.head), b""
        self._frames(early)

    def _frames(self, nbytes: int) -> None:
        k, self.pending = divmod(self.pending + nbytes, self.frame_len)
        assert self.transport is not None
        for _ in range(k):
            self.transport.write(self.answer)


def payload_size(head: bytes) -> int:
    """Payload length from a frame header (which `client_frame_len` found complete)."""
    n = head[1] & 0x7F
    if n < 126:
        return n
    if n == 126:
        return int(struct.unpack("!H", head[2:4])[0])
    return int(struct.unpack("!Q", head[2:10])[0])


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for port in ports:
        await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ws_upstream", description=__doc__)
    p.add_argument("--ports", required=True, help="comma-separated, e.g. 9001,9002")
    a = p.parse_args(argv)
    fast_loop()
    asyncio.run(serve([int(x) for x in a.ports.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
