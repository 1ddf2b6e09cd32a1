"""Proxy-made errors through the real proxy: malformed input, limits, timeouts, upstream faults.

Malformed requests go over raw sockets; each must be answered by the proxy, close the
connection, and forward nothing to the upstream.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from util_servers import (
    ProxyHandle,
    Upstream,
    config_from_yaml,
    json_body,
    raw_exchange,
    simple_config,
    start_proxy,
    start_upstream,
    status_of,
)


@pytest.fixture
async def proxy(upstream: Upstream):
    cfg = simple_config(
        {"v1": [upstream.address]},
        extra_route="    max_body: 1000",
        limits="limits: {header_timeout: 0.3, body_timeout: 0.3}",
    )
    p = await start_proxy(cfg)
    yield p
    await p.close()


H = b"Host: a\r\n"
BAD = {
    "cl_and_te": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "bad_cl": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc",
    "te_not_chunked": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "ctl_in_value": b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
    "nul_in_name": b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n",
    "space_in_name": b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n",
    "missing_host": b"GET / HTTP/1.1\r\n\r\n",
    "duplicate_host": b"GET / HTTP/1.1\r\n" + H + H + b"\r\n",
    "http10_te": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    "two_spaces_in_request_line": b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    "host_with_space": b"GET / HTTP/1.1\r\nHost: local host\r\n\r\n",
    "host_with_slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "bad_chunk": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
async def test_malformed_request_400_close_nothing_forwarded(
    proxy: ProxyHandle, upstream: Upstream, name: str
) -> None:
    out = await raw_exchange(proxy.port, BAD[name])
    assert status_of(out) == 400, out
    assert b"x-canaryproxy-error: bad_request" in out
    assert b"Connection: close" in out
    assert upstream.requests == []


async def test_connect_is_405(proxy: ProxyHandle, upstream: Upstream) -> None:
    out = await raw_exchange(proxy.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(out) == 405 and upstream.requests == []


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
        (b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\n"
            + H
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 7000) for i in range(10))
            + b"\r\n",
            431,
        ),
        (
            b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
            431,
        ),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\n"
            + H
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"200\r\n" + b"x" * 512 + b"\r\n" for _ in range(3)),
            413,
        ),
        (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nExpect: magic\r\n\r\n", 417),
    ],
    ids=["414", "431-field", "431-total", "431-count", "413-cl", "413-chunked", "417"],
)
async def test_limits(proxy: ProxyHandle, upstream: Upstream, request_bytes, status) -> None:
    out = await raw_exchange(proxy.port, request_bytes)
    assert status_of(out) == status, out[:200]
    assert b"Connection: close" in out
    if status != 413 or b"chunked" not in request_bytes:
        assert upstream.requests == []


async def test_expect_100_continue_only_after_checks(proxy: ProxyHandle) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"abc")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    out = await raw_exchange(
        proxy.port,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    )
    assert status_of(out) == 413 and b"100 Continue" not in out


async def test_header_deadline_is_absolute(proxy: ProxyHandle, upstream: Upstream) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    try:
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\n")
        for _ in range(40):  # trickled bytes do not extend the 0.3 s deadline
            await asyncio.sleep(0.05)
            try:
                await loop.sock_sendall(sock, b"X-A: b\r\n")
            except OSError:
                break
        out = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    finally:
        sock.close()
    assert status_of(out) == 408 and b"Connection: close" in out
    assert upstream.requests == []


async def test_body_inactivity_408(proxy: ProxyHandle) -> None:
    out = await raw_exchange(
        proxy.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"
    )
    assert status_of(out) == 408


async def test_no_route_404_counted_with_empty_version(upstream: Upstream) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: ["{upstream.address}"]}}
routes:
  - name: api
    match: [{{path: {{prefix: /api}}}}]
    route: [{{destination: v1}}]
""")
    p = await start_proxy(cfg)
    try:
        out = await raw_exchange(
            p.port, b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert status_of(out) == 404
        assert json_body(out) == {"error": "no route matches this request", "reason": "no_route"}
        assert p.metrics.observed == [("", "", "", 404)]
        # absolute-form: forwarded by its path, never connected to its authority, which is
        # the Host sent upstream (RFC 9112 §3.2.2: the received Host field is replaced)
        out = await raw_exchange(
            p.port,
            b"GET http://evil.example/api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert status_of(out) == 200 and json_body(out)["path"] == "/api/x"
        assert upstream.requests[-1]["headers"].getall("Host") == ["evil.example"]
    finally:
        await p.close()


async def test_refused_upstream_502() -> None:
    up = await start_upstream()
    address = up.address
    await up.close()  # nothing listens there now
    p = await start_proxy(simple_config({"v1": [address]}))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 502
        assert b"x-canaryproxy-error: upstream_connect_refused" in out
        assert p.metrics.errors == [("v1", "connect")]
        assert p.metrics.observed == [("default", "default", "v1", 502)]
    finally:
        await p.close()


async def test_slow_upstream_504() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    up = await start_upstream(slow)
    p = await start_proxy(simple_config({"v1": [up.address]}, extra_route="    timeout: 0.2s"))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 504
        assert b"x-canaryproxy-error: upstream_timeout" in out
        assert p.metrics.errors == [("v1", "timeout")]
    finally:
        await p.close()
        await up.close()


async def _raw_upstream(reply: bytes) -> tuple[asyncio.Server, int]:
    """A raw TCP upstream that reads a request head and sends `reply` bytes, then closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "reply,status,reason",
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", 502, b"upstream_bad_response"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            502,
            b"upstream_bad_response",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            502,
            b"upstream_bad_response",
        ),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(101))
            + b"Content-Length: 0\r\n\r\n",
            502,
            b"upstream_bad_response",
        ),
        (b"", 502, b"upstream_reset"),
    ],
    ids=["bad-status", "cl-te", "dup-cl", "101-headers", "empty"],
)
async def test_upstream_misbehaviour_502(reply: bytes, status: int, reason: bytes) -> None:
    srv, port = await _raw_upstream(reply)
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == status, out
        assert b"x-canaryproxy-error: " + reason in out
        assert p.pools.status()[0]["endpoints"][0]["idle"] == 0  # never kept for reuse
    finally:
        await p.close()
        srv.close()


async def test_upstream_dies_mid_body_truncates() -> None:
    srv, port = await _raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(out) == 200 and out.endswith(b"only-part")  # closed, not completed
    finally:
        await p.close()
        srv.close()


async def test_chunked_upstream_dies_mid_body_sends_no_terminator() -> None:
    srv, port = await _raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n"
    )
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status_of(out) == 200 and b"part" in out and not out.endswith(b"0\r\n\r\n")
    finally:
        await p.close()
        srv.close()


async def test_trailing_whitespace_in_values_is_not_part_of_them(
    proxy: ProxyHandle, upstream: Upstream
) -> None:
    out = await raw_exchange(
        proxy.port,
        b"PUT / HTTP/1.1\r\nHost: a \r\nContent-Length: 5  \r\nX-A: b \t\r\n"
        b"Connection: close\r\n\r\nhello",
    )
    assert status_of(out) == 200 and json_body(out)["body_len"] == 5
    assert upstream.requests[0]["headers"]["X-A"] == "b"


async def test_no_healthy_upstream_503_counted_in_real_metrics(upstream: Upstream) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.metrics import ProxyMetrics

    registry = CollectorRegistry()
    p = await start_proxy(simple_config({"v1": [upstream.address]}), ProxyMetrics(registry))
    try:
        p.pools.set_health("v1", upstream.address, False)
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 503
        assert b"x-canaryproxy-error: no_healthy_upstream" in out
        p.pools.set_health("v1", upstream.address, True)
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 200
        text = generate_latest(registry).decode()
        assert 'canaryproxy_upstream_errors_total{reason="no_healthy",version="v1"} 1.0' in text
        assert 'code="503",route="default",version="v1"} 1.0' in text
        assert 'code="200",route="default",version="v1"} 1.0' in text
    finally:
        await p.close()
