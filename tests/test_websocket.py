"""WebSocket / `Upgrade` tunnelling through the real data plane (SPEC §6): aiohttp's
`ws_connect` against aiohttp `WebSocketResponse` upstreams on 127.0.0.1, through the proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry
from util_servers import (
    ProxyHandle,
    Upstream,
    config_from_yaml,
    raw_exchange,
    start_proxy,
    start_upstream,
    status_of,
)

from proxy.dataplane.server import ProxyServer
from proxy.dataplane.upstream import Pools
from proxy.metrics import ProxyMetrics
from proxy.routing.table import build_table
from proxy.workers.counts import Counts
from tests.test_app_helpers import TOKEN_ENV, Admin, config_text, running_app

MIB = 1 << 20


def ws_app(name: str):  # noqa: ANN201  (an aiohttp handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/missing" or request.headers.get("Upgrade") is None:
            return web.Response(status=404, text=f"{name}: no websocket here")
        ws = web.WebSocketResponse(max_msg_size=4 * MIB)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "close":
                    await ws.close()
                    break
                if msg.data == "big":
                    await ws.send_bytes(b"u" * MIB)
                else:
                    await ws.send_str(f"{name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    return handle


def config(v1: Upstream, v2: Upstream, route: str = "", limits: str = ""):  # noqa: ANN201
    route = route or "route: [{destination: v1, weight: 100}, {destination: v2, weight: 0}]"
    return config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{limits}
upstreams:
  v1: {{endpoints: ["{v1.address}"]}}
  v2: {{endpoints: ["{v2.address}"]}}
routes:
  - name: testers
    match: [{{headers: {{user-id: {{exact: test-user-001}}}}}}]
    route: [{{destination: v2}}]
  - name: ws
    {route}
""")


@asynccontextmanager
async def proxy(route: str = "", limits: str = "") -> AsyncIterator[ProxyHandle]:
    v1, v2 = await start_upstream(ws_app("v1")), await start_upstream(ws_app("v2"))
    metrics = ProxyMetrics(CollectorRegistry())
    p = await start_proxy(config(v1, v2, route, limits), metrics)
    try:
        yield p
    finally:
        await p.close()
        await v1.close()
        await v2.close()


def sample(p: ProxyHandle, name: str, **labels: str) -> float:
    return p.metrics.registry.get_sample_value(name, labels) or 0.0


async def until(check, timeout: float = 3.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_echo_text_binary_and_one_mib_both_ways_counted() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{p.url}/chat", max_msg_size=4 * MIB) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str()) == "v1:hello"
            await ws.send_bytes(b"\x00\x01\xff")
            assert (await ws.receive_bytes()) == b"\x00\x01\xff"
            big = bytes(range(256)) * (MIB // 256)
            await ws.send_bytes(big)
            assert (await ws.receive_bytes()) == big
            await ws.send_str("big")
            assert (await ws.receive_bytes()) == b"u" * MIB
            labels = {"route": "ws", "version": "v1"}
            assert sample(p, "canaryproxy_tunnels_total", **labels) == 1
            assert sample(p, "canaryproxy_tunnels_active", **labels) == 1
            assert len(p.server.tunnels) == 1
        await until(lambda: not p.server.tunnels)
        assert sample(p, "canaryproxy_tunnels_active", route="ws", version="v1") == 0
        assert sample(p, "canaryproxy_tunnels_total", route="ws", version="v1") == 1
        codes = {"route": "ws", "version": "v1", "code": "101"}
        assert sample(p, "canaryproxy_requests_total", **codes) == 1
        assert p.server.in_flight == 0 and not p.server.connections


async def test_many_messages_keep_order() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{p.url}/chat") as ws:
            for i in range(200):
                await ws.send_str(str(i))
            for i in range(200):
                assert (await ws.receive_str()) == f"v1:{i}"


async def test_idle_tunnel_kept_then_closed_by_the_idle_timeout() -> None:
    async with proxy(limits="limits: {tunnel_idle_timeout: 0.5s}") as p:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{p.url}/chat") as ws:
            for _ in range(3):  # activity keeps it open past the timeout
                await asyncio.sleep(0.3)
                await ws.send_str("ping")
                assert (await ws.receive_str()) == "v1:ping"
            msg = await ws.receive(timeout=3)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        await until(lambda: not p.server.tunnels)
        assert sample(p, "canaryproxy_tunnels_active", route="ws", version="v1") == 0


async def test_close_from_client_and_from_upstream() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{p.url}/chat")
        await ws.send_str("x")
        await ws.receive_str()
        await ws.close()
        await until(lambda: not p.server.tunnels)
        async with s.ws_connect(f"{p.url}/chat") as ws:
            await ws.send_str("close")
            msg = await ws.receive(timeout=3)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        await until(lambda: not p.server.tunnels)
        assert sample(p, "canaryproxy_tunnels_total", route="ws", version="v1") == 2
        assert sample(p, "canaryproxy_tunnels_active", route="ws", version="v1") == 0


async def test_header_match_goes_to_v2_weight_zero_never() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.ws_connect(f"{p.url}/chat") as ws:
                await ws.send_str("a")
                assert (await ws.receive_str()) == "v1:a"
        headers = {"user-id": "test-user-001"}
        async with s.ws_connect(f"{p.url}/chat", headers=headers) as ws:
            await ws.send_str("a")
            assert (await ws.receive_str()) == "v2:a"
        await until(lambda: not p.server.tunnels)
        assert sample(p, "canaryproxy_tunnels_total", route="ws", version="v1") == 10
        assert sample(p, "canaryproxy_tunnels_total", route="testers", version="v2") == 1


async def test_user_id_hash_split_keeps_each_user_on_one_version() -> None:
    route = (
        "split: {by: header, name: x-user}\n"
        "    route: [{destination: v1, weight: 50}, {destination: v2, weight: 50}]"
    )
    async with proxy(route) as p, aiohttp.ClientSession() as s:
        seen: dict[str, set[str]] = {}
        for user in [f"u{i}" for i in range(20)] * 2:
            async with s.ws_connect(f"{p.url}/chat", headers={"x-user": user}) as ws:
                await ws.send_str("a")
                seen.setdefault(user, set()).add((await ws.receive_str()).split(":")[0])
        assert all(len(v) == 1 for v in seen.values())
        assert {next(iter(v)) for v in seen.values()} == {"v1", "v2"}


async def test_h2c_upgrade_is_not_tunnelled() -> None:
    async with proxy() as p:
        out = await raw_exchange(
            p.port,
            b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        assert status_of(out) == 404  # the upstream saw no Upgrade: a plain request
        assert b"no websocket here" in out
        assert not p.server.tunnels
        assert sample(p, "canaryproxy_tunnels_total", route="ws", version="v1") == 0


async def test_non_101_answer_is_relayed_as_a_normal_response() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(f"{p.url}/missing")
        assert info.value.status == 404
        async with s.get(f"{p.url}/missing", headers={"Upgrade": "websocket"}) as r:
            assert r.status == 404 and "no websocket here" in await r.text()
        codes = {"route": "ws", "version": "v1", "code": "404"}
        assert sample(p, "canaryproxy_requests_total", **codes) == 2
        assert sample(p, "canaryproxy_tunnels_total", route="ws", version="v1") == 0


async def test_drain_waits_for_tunnels_then_closes_them() -> None:
    async with proxy() as p, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{p.url}/chat") as ws:
            await ws.send_str("a")
            await ws.receive_str()
            await p.server.drain(0.3)
            assert not p.server.tunnels
            msg = await ws.receive(timeout=3)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        assert sample(p, "canaryproxy_tunnels_active", route="ws", version="v1") == 0


async def test_connection_goes_on_as_http_after_a_non_101() -> None:
    async with proxy() as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        try:
            writer.write(
                b"GET /missing HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\n\r\n"
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert head.startswith(b"HTTP/1.1 404") and b"close" not in head.lower()
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert b"no websocket here" in await reader.readexactly(length)
            writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            rest = await asyncio.wait_for(reader.read(), 3)
            assert rest.startswith(b"HTTP/1.1 404") and b"v1: no websocket here" in rest
        finally:
            writer.close()


async def test_app_status_lists_open_tunnels_by_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "t")
    v1, v2 = await start_upstream(ws_app("v1")), await start_upstream(ws_app("v2"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(v1.port, v2.port))
    try:
        async with running_app(cfg, tmp_path / "s.json") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app, "t")
            async with s.ws_connect(f"http://127.0.0.1:{app.proxy_port}/chat") as ws:
                await ws.send_str("a")
                assert (await ws.receive_str()) == "v1:a"
                _, st = await admin.call("GET", "/api/v1/status")
                assert st["routes"][0]["tunnels"] == {"v1": 1}  # type: ignore[index]
            async with asyncio.timeout(3):
                while True:
                    _, st = await admin.call("GET", "/api/v1/status")
                    if st["routes"][0]["tunnels"] == {}:  # type: ignore[index]
                        break
                    await asyncio.sleep(0.02)
    finally:
        await v1.close()
        await v2.close()


def test_worker_tunnel_counts_merge_into_the_supervisor() -> None:
    m = ProxyMetrics(CollectorRegistry())
    key = ("ws", "v1")
    labels = {"route": "ws", "version": "v1"}

    def get(name: str) -> float:
        return m.registry.get_sample_value(name, labels) or 0.0

    m.merge(1, Counts({}, {}, {}, 0, {key: 2}, {key: 1}))
    m.merge(2, Counts({}, {}, {}, 0, {key: 3}, {key: 3}))
    assert get("canaryproxy_tunnels_total") == 5 and get("canaryproxy_tunnels_active") == 4
    m.merge(1, Counts({}, {}, {}, 0, {key: 2}, {}))  # its tunnel closed
    m.retire(2)  # a worker that exits takes its tunnels with it
    assert get("canaryproxy_tunnels_total") == 5 and get("canaryproxy_tunnels_active") == 0
    assert m.tunnels("ws") == {}


class FakeTransport:
    """Records what a tunnel end does to its transport."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.reading, self.closed = True, False
        self.protocol: object = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_tunnel_backpressure_pauses_the_other_side_and_either_close_ends_both() -> None:
    from typing import Any

    from proxy.dataplane.tunnel import Tunnel

    class Server:
        loop = asyncio.get_running_loop()
        metrics = None
        tunnels: set[Any] = set()

    client, up = FakeTransport(), FakeTransport()
    t = Tunnel(Server(), "ws", "v1", client, up, 60.0)  # type: ignore[arg-type]
    t.start(b"early-from-client", b"early-from-upstream")
    assert up.out == [b"early-from-client"] and client.out == [b"early-from-upstream"]
    t.client.data_received(b"c")
    t.upstream.data_received(b"u")
    assert up.out[-1] == b"c" and client.out[-1] == b"u"
    t.client.pause_writing()  # the client cannot take more: stop reading the upstream
    assert not up.reading and client.reading
    t.client.resume_writing()
    assert up.reading
    t.upstream.pause_writing()
    assert not client.reading and up.reading
    t.upstream.resume_writing()
    assert client.reading
    assert Server.tunnels == {t}
    t.upstream.eof_received()  # a half-close ends both
    assert client.closed and up.closed and not Server.tunnels


async def test_wss_through_a_tls_listener(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("ws.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    up = await start_upstream(ws_app("v1"))
    cfg = config_from_yaml(f"""
listeners:
  - name: secure
    listen: "127.0.0.1:0"
    tls: {{certificates: [{{cert: {tmp_path}/c.pem, key: {tmp_path}/k.pem}}]}}
access_log: false
upstreams:
  v1: {{endpoints: ["{up.address}"]}}
routes:
  - {{name: ws, route: [{{destination: v1}}]}}
""")
    table, pools = build_table(cfg), Pools(cfg)
    server = ProxyServer(lambda: table, pools, None, None, cfg.limits)
    await server.start("127.0.0.1", 0, listener="secure", tls=cfg.all_listeners()[0].tls)
    p = ProxyHandle(server, pools, None, cfg)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    try:
        async with aiohttp.ClientSession() as s:
            url = f"wss://127.0.0.1:{p.port}/chat"
            headers = {"Host": "ws.test"}
            async with s.ws_connect(url, ssl=ctx, server_hostname="ws.test", headers=headers) as ws:
                big = b"t" * MIB
                await ws.send_bytes(big)
                assert (await ws.receive_bytes()) == big
        await until(lambda: not p.server.tunnels)
    finally:
        await p.close()
        await up.close()
