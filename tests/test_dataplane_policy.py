"""Route policy and upstream protection through the real proxy: retries, mirror, fault,
passive ejection, overload, stale keep-alive connections, client disconnect."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from util_servers import (
    config_from_yaml,
    raw_exchange,
    simple_config,
    start_proxy,
    start_upstream,
    status_of,
)

CLOSE = b"Connection: close\r\n"


def two_subsets(a: str, b: str, route: str, upstream_extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: [{a}]{upstream_extra}}}
  v2: {{endpoints: [{b}]}}
routes:
  - name: default
{route}
"""


async def test_retry_503_goes_to_another_endpoint() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    bad = await start_upstream(unavailable)
    good = await start_upstream()
    cfg = simple_config(
        {"v1": [bad.address, good.address]},
        extra_route='    retries: {attempts: 1, retry_on: ["503"]}',
    )
    p = await start_proxy(cfg)
    try:
        for _ in range(4):  # round-robin starts on either endpoint; every answer is 200
            out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
            assert status_of(out) == 200
        assert len(bad.requests) >= 1 and len(good.requests) == 4
    finally:
        await p.close()
        await bad.close()
        await good.close()


async def test_post_is_not_retried_after_bytes_reached_upstream() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="busy")

    bad = await start_upstream(unavailable)
    good = await start_upstream()
    cfg = simple_config(
        {"v1": [bad.address, good.address]},
        extra_route='    retries: {attempts: 3, retry_on: ["503", reset]}',
    )
    p = await start_proxy(cfg)
    try:
        statuses = []
        for _ in range(2):
            out = await raw_exchange(
                p.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n" + CLOSE + b"\r\nhi"
            )
            statuses.append(status_of(out))
        assert sorted(statuses) == [200, 503]
        assert len(bad.requests) + len(good.requests) == 2
    finally:
        await p.close()
        await bad.close()
        await good.close()


async def test_connect_failure_retried_then_502_without_retries() -> None:
    gone = await start_upstream()
    dead = gone.address
    await gone.close()
    good = await start_upstream()
    cfg = simple_config(
        {"v1": [dead, good.address]}, extra_route="    retries: {attempts: 1}"
    )  # retry_on defaults to connect-failure
    p = await start_proxy(cfg)
    try:
        for _ in range(2):
            out = await raw_exchange(
                p.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n" + CLOSE + b"\r\n"
            )
            assert status_of(out) == 200  # nothing reached the dead one: safe even for POST
    finally:
        await p.close()
    p = await start_proxy(simple_config({"v1": [dead, good.address]}))
    try:
        statuses = []
        for _ in range(2):
            req = b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"
            statuses.append(status_of(await raw_exchange(p.port, req)))
        assert sorted(statuses) == [200, 502]
    finally:
        await p.close()
        await good.close()


async def test_passive_ejection_after_five_failures_never_last() -> None:
    # An endpoint that accepts and hangs up: each request fails with a reset. (A refused
    # connect ejects at once, the last endpoint too: tests/test_gateway_dataplane.py.)
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    closer = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    dead = f"127.0.0.1:{closer.sockets[0].getsockname()[1]}"
    good = await start_upstream()
    p = await start_proxy(simple_config({"v1": [dead, good.address]}))
    try:
        codes = [
            status_of(
                await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
            )
            for _ in range(20)
        ]
        assert codes.count(502) == 5  # then the dead endpoint is ejected
        eps = {e["address"]: e for e in p.pools.status()[0]["endpoints"]}
        assert eps[dead]["ejected"] and not eps[good.address]["ejected"]
    finally:
        await p.close()
    p = await start_proxy(simple_config({"v1": [dead]}))
    try:
        for _ in range(7):
            await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert not p.pools.status()[0]["endpoints"][0]["ejected"]  # the last one stays
    finally:
        await p.close()
        await good.close()
        closer.close()
        await closer.wait_closed()


async def test_mirror_copies_request_and_discards_answer() -> None:
    main = await start_upstream()
    shadow_seen = asyncio.Event()

    async def shadow_handler(request: web.Request) -> web.Response:
        await request.read()
        shadow_seen.set()
        return web.Response(status=500, text="ignored")

    shadow = await start_upstream(shadow_handler)
    route = "    route: [{destination: v1}]\n    mirror: {destination: v2, percent: 100}"
    p = await start_proxy(
        config_from_yaml(two_subsets(f'"{main.address}"', f'"{shadow.address}"', route))
    )
    try:
        out = await raw_exchange(
            p.port, b"POST /m HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n" + CLOSE + b"\r\nbody"
        )
        assert status_of(out) == 200
        await asyncio.wait_for(shadow_seen.wait(), 5)
        assert shadow.requests[0]["path"] == "/m" and shadow.requests[0]["method"] == "POST"
        assert p.metrics.mirrors == [("default", "v2")]
        assert [o[2] for o in p.metrics.observed] == ["v1"]  # the copy is not a request
    finally:
        await p.close()
        await main.close()
        await shadow.close()


async def test_mirror_to_dead_upstream_does_not_affect_request() -> None:
    main = await start_upstream()
    gone = await start_upstream()
    dead = gone.address
    await gone.close()
    route = "    route: [{destination: v1}]\n    mirror: {destination: v2}"
    p = await start_proxy(config_from_yaml(two_subsets(f'"{main.address}"', f'"{dead}"', route)))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert status_of(out) == 200
    finally:
        await p.close()
        await main.close()


async def test_fault_abort_and_delay() -> None:
    up = await start_upstream()
    cfg = simple_config(
        {"v1": [up.address]}, extra_route="    fault: {abort: {status: 418, percent: 100}}"
    )
    p = await start_proxy(cfg)
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert status_of(out) == 418 and b"x-canaryproxy-error: fault_abort" in out
        assert up.requests == []
        assert p.metrics.observed == [("default", "default", "v1", 418)]
    finally:
        await p.close()
    cfg = simple_config({"v1": [up.address]}, extra_route="    fault: {delay: {fixed: 0.2s}}")
    p = await start_proxy(cfg)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert status_of(out) == 200 and loop.time() - t0 >= 0.2  # waited before forwarding
    finally:
        await p.close()
        await up.close()


async def test_overload_503_with_retry_after() -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    up = await start_upstream(hold)
    cfg = simple_config(
        {"v1": [up.address]},
        upstream_extra=", max_connections: 1, max_pending: 1, queue_timeout: 0.2s",
    )
    p = await start_proxy(cfg)
    try:
        req = b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"
        first = asyncio.create_task(raw_exchange(p.port, req))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(raw_exchange(p.port, req))  # waits, then times out
        await asyncio.sleep(0.05)
        rejected = await raw_exchange(p.port, req)  # queue full: fast 503
        assert status_of(rejected) == 503 and b"Retry-After: 1" in rejected
        assert b"x-canaryproxy-error: overloaded" in rejected
        assert status_of(await queued) == 503
        release.set()
        assert status_of(await first) == 200
    finally:
        release.set()
        await p.close()
        await up.close()


async def test_stale_keepalive_connection_is_retried_once_for_get() -> None:
    """The upstream closes an idle connection without notice; the next GET still succeeds."""
    count = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        await reader.readuntil(b"\r\n\r\n")
        # advertise keep-alive, then drop the connection once the answer is out
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out1 = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert status_of(out1) == 200
        await asyncio.sleep(0.02)  # our side still holds the idle connection
        out2 = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
        assert status_of(out2) == 200 and count == 2
    finally:
        await asyncio.sleep(0.1)  # let the last handler close its socket
        await p.close()
        srv.close()


async def test_client_disconnect_cancels_upstream_request() -> None:
    done = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await asyncio.wait_for(done.wait(), 10)
        return web.Response(text="late")

    up = await start_upstream(hold)
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        await asyncio.sleep(0.3)
        status = p.pools.status()[0]
        assert status["in_flight"] == 0 and status["connections"] == 0  # upstream side closed
        assert p.metrics.observed[-1][3] == 499
    finally:
        done.set()
        await p.close()
        await up.close()


async def test_upstream_body_flows_with_aiohttp_client_many_requests() -> None:
    up = await start_upstream()
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:

        async def post(s: aiohttp.ClientSession, i: int) -> dict:
            async with s.post(p.url + f"/c{i}", data=b"x" * (i * 1000)) as r:
                return await r.json()

        async with aiohttp.ClientSession() as s:
            bodies = await asyncio.gather(*(post(s, i) for i in range(30)))
        assert [b["body_len"] for b in bodies] == [i * 1000 for i in range(30)]
        assert p.pools.status()[0]["in_flight"] == 0
    finally:
        await p.close()
        await up.close()


@pytest.mark.parametrize("checked", [True])
async def test_added_endpoint_with_health_check_waits_for_first_pass(checked: bool) -> None:
    a = await start_upstream()
    b = await start_upstream()
    hc = ", health_check: {path: /health}"
    p = await start_proxy(simple_config({"v1": [a.address]}, upstream_extra=hc))
    try:
        p.pools.update(simple_config({"v1": [a.address, b.address]}, upstream_extra=hc))
        eps = {e["address"]: e["healthy"] for e in p.pools.status()[0]["endpoints"]}
        assert eps == {a.address: True, b.address: False}
        p.pools.set_health("v1", b.address, checked)
        eps = {e["address"]: e["healthy"] for e in p.pools.status()[0]["endpoints"]}
        assert eps[b.address] is checked
    finally:
        await p.close()
        await a.close()
        await b.close()


async def test_per_try_timeout_moves_to_the_next_endpoint() -> None:
    release = asyncio.Event()

    async def stuck(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    slow = await start_upstream(stuck)
    fast = await start_upstream()
    cfg = simple_config(
        {"v1": [slow.address, fast.address]},
        extra_route='    retries: {attempts: 1, per_try_timeout: 0.2s, retry_on: ["504"]}',
    )
    p = await start_proxy(cfg)
    try:
        for _ in range(2):
            out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n")
            assert status_of(out) == 200
        assert len(slow.requests) >= 1 and len(fast.requests) == 2
    finally:
        release.set()
        await p.close()
        await slow.close()
        await fast.close()


async def test_large_body_is_not_retried() -> None:
    async def unavailable(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=503, text="busy")

    bad = await start_upstream(unavailable)
    cfg = simple_config(
        {"v1": [bad.address]}, extra_route='    retries: {attempts: 2, retry_on: ["503"]}'
    )
    p = await start_proxy(cfg)
    try:
        big = b"x" * (200 * 1024)
        req = b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n" % len(big) + CLOSE + b"\r\n"
        out = await raw_exchange(p.port, req + big)
        assert status_of(out) == 503 and len(bad.requests) == 1  # body not kept: no replay
        small = b"y" * 1000
        req = b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n" % len(small) + CLOSE + b"\r\n"
        out = await raw_exchange(p.port, req + small)
        assert status_of(out) == 503 and len(bad.requests) == 4  # 1 + 2 retries
    finally:
        await p.close()
        await bad.close()


async def test_max_requests_in_flight_503() -> None:
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    up = await start_upstream(hold)
    cfg = simple_config({"v1": [up.address]}, upstream_extra=", max_requests: 1")
    p = await start_proxy(cfg)
    try:
        req = b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE + b"\r\n"
        first = asyncio.create_task(raw_exchange(p.port, req))
        await asyncio.sleep(0.2)
        out = await raw_exchange(p.port, req)
        assert status_of(out) == 503 and b"x-canaryproxy-error: overloaded" in out
        release.set()
        assert status_of(await first) == 200
    finally:
        release.set()
        await p.close()
        await up.close()


async def test_upgrade_answered_without_101_closes_when_bytes_followed_the_head() -> None:
    """The upgrade goes upstream (tunnelled on a 101: tests/test_websocket.py); a plain answer
    is relayed, and bytes sent ahead of it cannot be read as HTTP: the connection closes."""
    up = await start_upstream()
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        out = await raw_exchange(
            p.port,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        assert status_of(out) == 200 and out.count(b"HTTP/1.1 ") == 1
        assert up.requests[0]["headers"]["Upgrade"] == "websocket"
    finally:
        await p.close()
        await up.close()
