"""Lingering close: an error answer reaches a client that is still sending its body."""

from __future__ import annotations

import asyncio
import contextlib

from util_servers import simple_config, start_proxy, start_upstream, status_of

BODY = 8 * 1024 * 1024  # far more than the socket buffers hold


async def _upload_and_read(port: int, head: bytes) -> tuple[bytes, int]:
    """Send `head` and a BODY-byte body while reading; return (what was read, bytes sent)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def send() -> None:
        nonlocal sent
        writer.write(head)
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):
            while sent < BODY:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    sender = asyncio.create_task(send())
    out = b""
    try:
        async with asyncio.timeout(10):
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    out += chunk
            await sender
    finally:
        sender.cancel()
        writer.close()
    return out, sent


async def test_client_reads_the_413_although_it_keeps_sending() -> None:
    up = await start_upstream()
    p = await start_proxy(simple_config({"v1": [up.address]}, extra_route="    max_body: 1024"))
    try:
        head = b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % BODY
        for _ in range(3):  # a reset would lose the answer on some of the tries
            out, sent = await _upload_and_read(p.port, head)
            assert status_of(out) == 413 and b"Connection: close" in out
            assert sent == BODY  # the proxy drained the body instead of resetting
        assert up.requests == []
    finally:
        await p.close()
        await up.close()


async def test_lingering_connection_ends_when_the_client_closes() -> None:
    up = await start_upstream()
    p = await start_proxy(simple_config({"v1": [up.address]}, extra_route="    max_body: 1024"))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\nabc")
        async with asyncio.timeout(5):
            out = await reader.read()  # the proxy's FIN ends the answer
        assert status_of(out) == 413
        assert len(p.server.connections) == 1  # still draining what the client sends
        writer.close()
        async with asyncio.timeout(5):
            while p.server.connections:
                await asyncio.sleep(0.01)
    finally:
        await p.close()
        await up.close()
