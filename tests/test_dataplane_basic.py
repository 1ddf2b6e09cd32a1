"""Forwarding through the real proxy: methods, bodies, framing, keep-alive, pipelining."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from util_servers import (
    ProxyHandle,
    Upstream,
    json_body,
    raw_exchange,
    simple_config,
    start_proxy,
    start_upstream,
    status_of,
)
from yarl import URL


@pytest.fixture
async def proxy(upstream: Upstream):
    p = await start_proxy(simple_config({"v1": [upstream.address]}))
    yield p
    await p.close()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
async def test_methods_and_bodies_are_forwarded(proxy: ProxyHandle, method: str) -> None:
    body = b"" if method == "GET" else b"payload-" * 1000
    async with aiohttp.ClientSession() as s:
        url = URL(proxy.url + "/items/a%2Fb?x=%2F&y=1", encoded=True)
        async with s.request(method, url, data=body) as r:
            assert r.status == 200
            got = await r.json()
    assert got["method"] == method
    assert got["path"] == "/items/a%2Fb?x=%2F&y=1"  # raw path and query unchanged
    assert got["body_len"] == len(body)
    assert proxy.metrics.observed[-1] == ("default", "default", "v1", 200)


async def test_chunked_request_body_is_reframed(proxy: ProxyHandle) -> None:
    async def gen():
        for _ in range(5):
            yield b"a" * 10000

    async with aiohttp.ClientSession() as s:
        async with s.post(proxy.url + "/up", data=gen()) as r:
            got = await r.json()
    assert got["body_len"] == 50000
    names = {k.lower(): v for k, v in got["headers"]}
    assert names["transfer-encoding"] == "chunked"


async def test_chunked_response_streams_to_http11_and_closes_for_http10() -> None:
    async def chunky(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"part%d;" % i)
        await resp.write_eof()
        return resp

    up = await start_upstream(chunky)
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        r11 = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in r11
        assert r11.endswith(b"0\r\n\r\n")
        r10 = await raw_exchange(p.port, b"GET / HTTP/1.0\r\n\r\n")
        head, body = r10.split(b"\r\n\r\n", 1)
        assert b"chunked" not in head.lower() and b"connection: close" in head.lower()
        assert body == b"part0;part1;part2;"
    finally:
        await p.close()
        await up.close()


async def test_keep_alive_reuses_one_upstream_connection(proxy: ProxyHandle, upstream) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.get(proxy.url + "/") as r:
                await r.read()
    assert len(upstream.requests) == 5
    assert upstream.connections == 1


async def test_pipelined_requests_are_answered_in_order(proxy: ProxyHandle) -> None:
    reqs = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(4))
        + b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    out = await raw_exchange(proxy.port, reqs)
    paths = [p.decode() for p in __import__("re").findall(rb'"path": "([^"]*)"', out)]
    assert paths == ["/0", "/1", "/2", "/3", "/last"]
    assert out.count(b"HTTP/1.1 200") == 5


async def test_http10_closes_unless_keep_alive(proxy: ProxyHandle) -> None:
    out = await raw_exchange(proxy.port, b"GET / HTTP/1.0\r\n\r\n", timeout=3)
    assert status_of(out) == 200 and b"Connection: close" in out
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for _ in range(2):
            writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"Connection: keep-alive" in head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
    finally:
        writer.close()


async def test_head_204_304_have_no_body() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/204":
            return web.Response(status=204)
        if request.path == "/304":
            return web.Response(status=304, headers={"ETag": '"x"'})
        return web.Response(body=b"0123456789")

    up = await start_upstream(handler)
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        reqs = (
            b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /204 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /body HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        out = await raw_exchange(p.port, reqs)
        parts = out.split(b"HTTP/1.1 ")[1:]
        assert [x[:3] for x in parts] == [b"200", b"204", b"304", b"200"]
        assert b"Content-Length: 10" in parts[0] and parts[0].endswith(b"\r\n\r\n")
        assert parts[1].endswith(b"\r\n\r\n") and parts[2].endswith(b"\r\n\r\n")
        assert parts[3].endswith(b"0123456789")
        # A HEAD answer that declares a body is not reused (a stray body would desync it).
        assert up.connections == 2
    finally:
        await p.close()
        await up.close()


async def test_connection_close_is_honoured(proxy: ProxyHandle) -> None:
    out = await raw_exchange(
        proxy.port,
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 ") == 1
    assert json_body(out)["path"] == "/1"


async def test_keepalive_requests_limit_closes(upstream: Upstream) -> None:
    cfg = simple_config({"v1": [upstream.address]}, limits="limits: {keepalive_requests: 2}")
    p = await start_proxy(cfg)
    try:
        reqs = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 3
        out = await raw_exchange(p.port, reqs)
        assert out.count(b"HTTP/1.1 200") == 2
        assert out.split(b"HTTP/1.1 200")[2].count(b"Connection: close") == 1
    finally:
        await p.close()


async def test_access_log_writes_json_lines(upstream: Upstream, tmp_path) -> None:
    from proxy.dataplane.accesslog import AccessLog

    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    p = await start_proxy(simple_config({"v1": [upstream.address]}), access_log=log)
    try:
        await raw_exchange(p.port, b"GET /logged HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    finally:
        await p.close()
        log.close()
    import json

    line = json.loads(path.read_text().splitlines()[0])
    assert line["path"] == "/logged" and line["status"] == 200 and line["version"] == "v1"
    assert line["upstream"] == upstream.address and line["route"] == "default"


async def test_head_answer_without_length_keeps_connection_in_sync() -> None:
    """A HEAD answer with neither Content-Length nor chunking ends at its head."""
    served: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            served.append(head.split(b" ", 1)[0])
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nX-Head: 1\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nget")
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out = await raw_exchange(
            p.port,
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"get")
        assert served == [b"HEAD", b"GET"]
    finally:
        await p.close()
        srv.close()
        await asyncio.sleep(0.05)


async def test_early_answer_drops_rest_of_body_and_keeps_client_connection() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")  # body not read
        await writer.drain()
        while await reader.read(65536):
            pass
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        size = 2 * 1024 * 1024
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"z" * 65536)
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"early"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head
        writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"early")
        writer.close()
    finally:
        await p.close()
        srv.close()
        await asyncio.sleep(0.05)


async def test_close_delimited_upstream_body_is_reframed() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-")
        await writer.drain()
        writer.write(b"the-end")
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    p = await start_proxy(simple_config({"v1": [f"127.0.0.1:{port}"]}))
    try:
        out11 = await raw_exchange(
            p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        assert b"Transfer-Encoding: chunked" in out11 and out11.endswith(b"0\r\n\r\n")
        assert b"until-" in out11 and b"the-end" in out11
        out10 = await raw_exchange(p.port, b"GET / HTTP/1.0\r\n\r\n")
        assert out10.endswith(b"\r\n\r\nuntil-the-end")
        assert p.metrics.observed[-1][3] == 200
    finally:
        await p.close()
        srv.close()
        await asyncio.sleep(0.05)
