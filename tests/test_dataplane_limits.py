"""The request-head limits of README "Behaviour at the edges", at their exact boundaries.

A limit of N allows N: a head exactly at a limit reaches the real upstream, one byte (or one
field line) over it is answered by the proxy with 414/431 + close and forwards nothing, and the
proxy goes on serving. Field lines are counted as sent, `Host` included, and so are the ones
the proxy drops (names with `_`). Each head is sent in one write and split over two writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from util_servers import ProxyHandle, Upstream, raw_exchange, simple_config, start_proxy, status_of

CLOSE = b"Connection: close"  # every head below closes, so each exchange ends at once


def head(fields: list[bytes], target: bytes = b"/") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def n_fields(n: int, dropped: bool = False) -> bytes:
    """A head of exactly `n` field lines; with `dropped`, one has a name the proxy drops."""
    fields = [b"Host: a", CLOSE] + [b"X-%d: v" % i for i in range(n - 2)]
    if dropped:
        fields[2] = b"X_dropped: v"
    return head(fields)


def field_line(size: int) -> bytes:
    """One field line `X-Big: vvv...` of `size` bytes (CRLF not included)."""
    return head([b"Host: a", CLOSE, b"X-Big: " + b"v" * (size - 7)])


def section(size: int) -> bytes:
    """Field lines that, each with its CRLF, add up to `size` bytes."""
    fields = [b"Host: a", CLOSE]
    left = size - sum(len(f) + 2 for f in fields)
    while left:
        name = b"X-%d" % len(fields)
        line = min(left, 8002) - 2
        fields.append(name + b": " + b"v" * (line - len(name) - 2))
        left -= line + 2
    assert sum(len(f) + 2 for f in fields) == size
    return head(fields)


def target(size: int) -> bytes:
    """A request target of `size` bytes."""
    return head([b"Host: a", CLOSE], b"/" + b"a" * (size - 1))


# (build a head from a size, the README's limit, the answer one over it)
LIMITS: dict[str, tuple[Callable[[int], bytes], int, int]] = {
    "field-count": (n_fields, 100, 431),
    "field-count-with-dropped-name": (lambda n: n_fields(n, dropped=True), 100, 431),
    "field-size": (field_line, 8192, 431),
    "all-fields-size": (section, 60 * 1024, 431),
    "target-length": (target, 8192, 414),
}


async def big_upstream() -> Upstream:
    """A recording upstream whose own parser limits lie well above the proxy's."""
    up: Upstream

    async def record(request: web.Request) -> web.Response:
        up.requests.append({"path": request.path_qs, "headers": request.headers.copy()})
        return web.Response(text="ok")

    big = {"max_line_size": 1 << 16, "max_field_size": 1 << 16, "max_headers": 1000}
    app = web.Application(handler_args=big)
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up = Upstream(runner, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return up


@pytest.fixture
async def pair() -> AsyncIterator[tuple[ProxyHandle, Upstream]]:
    up = await big_upstream()
    proxy = await start_proxy(simple_config({"v1": [up.address]}))
    yield proxy, up
    await proxy.close()
    await up.close()


async def send(port: int, data: bytes, split: bool) -> bytes:
    """One exchange; with `split`, the head arrives in two reads."""
    if not split:
        return await raw_exchange(port, data)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        half = len(data) // 2
        writer.write(data[:half])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(data[half:])
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
@pytest.mark.parametrize("name", list(LIMITS))
async def test_a_head_at_the_limit_is_served(
    pair: tuple[ProxyHandle, Upstream], name: str, split: bool
) -> None:
    proxy, up = pair
    build, limit, _ = LIMITS[name]
    out = await send(proxy.port, build(limit), split)
    assert status_of(out) == 200, out[:300]
    assert len(up.requests) == 1


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
@pytest.mark.parametrize("name", list(LIMITS))
async def test_a_head_over_the_limit_is_refused_and_the_proxy_stays_up(
    pair: tuple[ProxyHandle, Upstream], name: str, split: bool
) -> None:
    proxy, up = pair
    build, limit, status = LIMITS[name]
    out = await send(proxy.port, build(limit + 1), split)
    assert status_of(out) == status, out[:300]
    assert b"Connection: close" in out
    assert up.requests == []
    assert status_of(await raw_exchange(proxy.port, head([b"Host: a", CLOSE]))) == 200
    assert len(up.requests) == 1


async def test_a_dropped_name_is_counted_but_not_forwarded(
    pair: tuple[ProxyHandle, Upstream],
) -> None:
    proxy, up = pair
    out = await raw_exchange(proxy.port, n_fields(100, dropped=True))
    assert status_of(out) == 200, out[:300]
    (got,) = up.requests
    assert "X_dropped" not in got["headers"] and got["headers"]["X-97"] == "v"
