"""Connection lifecycle: drain, keep-alive idle timeout, connection limit, pool reloads,
ejection back-off."""

from __future__ import annotations

import asyncio

from aiohttp import web
from util_servers import (
    raw_exchange,
    simple_config,
    start_proxy,
    start_upstream,
    status_of,
)

from proxy.dataplane.upstream import EJECT_BASE, EJECT_MAX, Pools


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_drain_finishes_in_flight_with_close_and_drops_idle() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.Response(text="done")

    up = await start_upstream(slow)
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        idle_r, idle_w = await _open(p.port)
        idle_w.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        await idle_r.readuntil(b"done")
        busy_r, busy_w = await _open(p.port)
        busy_w.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.1)
        drain = asyncio.create_task(p.server.drain(5))
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(idle_r.read(), 2) == b""  # idle keep-alive closed
        release.set()
        out = await asyncio.wait_for(busy_r.read(), 5)
        assert status_of(out) == 200 and b"Connection: close" in out and out.endswith(b"done")
        await asyncio.wait_for(drain, 5)
        assert p.server.connections == set()
        try:
            await _open(p.port)
            refused = False
        except OSError:
            refused = True
        assert refused  # no longer accepting
        idle_w.close()
        busy_w.close()
    finally:
        release.set()
        await p.close()
        await up.close()


async def test_keepalive_idle_timeout_closes_connection() -> None:
    up = await start_upstream()
    cfg = simple_config({"v1": [up.address]}, limits="limits: {keepalive_timeout: 0.2}")
    p = await start_proxy(cfg)
    try:
        reader, writer = await _open(p.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 3)  # body, then EOF after the idle limit
        assert rest.endswith(b"}")
        writer.close()
    finally:
        await p.close()
        await up.close()


async def test_max_connections_refuses_beyond_limit() -> None:
    up = await start_upstream()
    cfg = simple_config({"v1": [up.address]}, limits="limits: {max_connections: 2}")
    p = await start_proxy(cfg)
    try:
        held = [await _open(p.port) for _ in range(2)]
        await asyncio.sleep(0.05)
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", timeout=2)
        assert out == b""  # closed without an answer
        for _, w in held:
            w.close()
        await asyncio.sleep(0.05)
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 200
    finally:
        await p.close()
        await up.close()


async def test_pools_update_keeps_unchanged_and_drains_removed() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    a = await start_upstream(slow)
    b = await start_upstream()
    p = await start_proxy(simple_config({"v1": [a.address], "v2": [b.address]}))
    try:
        v2 = p.pools.pool("v2")
        task = asyncio.create_task(
            raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        )
        await asyncio.sleep(0.1)
        old_v1 = p.pools.pool("v1")
        p.pools.update(simple_config({"v2": [b.address], "v3": [b.address]}))
        assert p.pools.pool("v2") is v2 and p.pools.pool("v1") is None
        assert p.pools.pool("v3") is not None and old_v1.draining
        release.set()
        assert status_of(await task) == 200  # the in-flight request finished on the old pool
        assert old_v1.connections == 0
    finally:
        release.set()
        await p.close()
        await a.close()
        await b.close()


async def test_ejection_backs_off_and_never_ejects_the_last() -> None:
    cfg = simple_config({"v1": ["127.0.0.1:1", "127.0.0.1:2"]})
    pools = Pools(cfg)
    pool = pools.pool("v1")
    assert pool is not None
    first, second = pool.endpoints
    loop = asyncio.get_running_loop()
    durations = []
    for _ in range(5):
        first.ejected_until = 0.0
        for _ in range(5):
            pool.report(first, False)
        durations.append(round(first.ejected_until - loop.time()))
    assert durations == [EJECT_BASE, 2 * EJECT_BASE, 4 * EJECT_BASE, 8 * EJECT_BASE, EJECT_MAX]
    for _ in range(5):
        pool.report(second, False)
    assert not second.ejected(loop.time())  # first is ejected: second is the last one left
    pools.close()
