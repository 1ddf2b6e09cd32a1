"""HTTPS to upstreams (`upstreams.NAME.tls`): real TLS on 127.0.0.1, certificates by trustme.

Each upstream is an aiohttp site with its own server context; the proxy is the real data
plane (`tests.util_servers.start_proxy`) counting into a real `ProxyMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import trustme
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from proxy.config.validate import validate
from proxy.dataplane.health import HealthChecker
from proxy.dataplane.upstream import Pools
from proxy.metrics import ProxyMetrics
from tests.util_servers import ProxyHandle, config_from_yaml, start_proxy, start_upstream


@dataclass
class TlsUpstream:
    runner: web.AppRunner
    port: int
    peers: set[Any] = field(default_factory=set)  # (host, port) of each TLS connection
    names: list[str | None] = field(default_factory=list)  # SNI of each handshake
    hosts: list[str] = field(default_factory=list)  # Host of each request
    alpn: set[str | None] = field(default_factory=set)  # the protocols negotiated

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_tls_upstream(ctx: ssl.SSLContext, host: str = "127.0.0.1") -> TlsUpstream:
    box: list[TlsUpstream] = []

    def servername(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        box[0].names.append(name)

    ctx.sni_callback = servername

    async def handle(request: web.Request) -> web.Response:
        up = box[0]
        up.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        up.hosts.append(request.headers.get("Host", ""))
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        up.alpn.add(tls.selected_alpn_protocol() if tls else None)
        return web.Response(text="tls:" + request.path)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ctx)
    await site.start()
    up = TlsUpstream(runner, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    box.append(up)
    return up


@dataclass
class Pki:
    ca: trustme.CA
    dir: pathlib.Path

    def server_context(self, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost", "v1.internal").configure_cert(ctx)
        ctx.set_alpn_protocols(["h2", "http/1.1"])  # the proxy must pick http/1.1
        if client_ca is not None:  # mTLS: a client certificate is required
            ctx.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(ctx)
        return ctx

    def write_ca(self, ca: trustme.CA, name: str) -> str:
        path = self.dir / name
        ca.cert_pem.write_to_path(str(path))
        return str(path)


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(trustme.CA(), tmp_path)


def proxy_config(endpoint: str, tls: str, more: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: ["{endpoint}"], tls: {tls}{more}}}
routes:
  - name: default
    route: [{{destination: v1}}]
"""


@pytest.fixture
async def running() -> AsyncIterator[list[Any]]:
    """Things to close at the end of the test (proxies and upstreams)."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


async def proxy_for(running: list[Any], text: str) -> tuple[ProxyHandle, CollectorRegistry]:
    registry = CollectorRegistry()
    proxy = await start_proxy(config_from_yaml(text), metrics=ProxyMetrics(registry))
    running.append(proxy)
    return proxy, registry


async def get(port: int, n: int = 1, host: str = "") -> list[tuple[int, str, str]]:
    """`n` GETs on one keep-alive connection: (status, error reason, body) each."""
    out = []
    headers = {"Host": host} if host else {}
    conn = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=conn) as s:
        for i in range(n):
            async with s.get(f"http://127.0.0.1:{port}/r{i}", headers=headers) as r:
                out.append((r.status, r.headers.get("x-canaryproxy-error", ""), await r.text()))
    return out


def tls_errors(registry: CollectorRegistry) -> float:
    line = 'canaryproxy_upstream_errors_total{reason="connect",version="v1"}'
    for text in generate_latest(registry).decode().splitlines():
        if text.startswith(line):
            return float(text.split()[-1])
    return 0.0


# --- the data plane ---------------------------------------------------------------------


async def test_pooled_https_connection_is_reused(pki: Pki, running: list[Any]) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    ca = pki.write_ca(pki.ca, "ca.pem")
    proxy, _ = await proxy_for(running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {ca}}}"))
    answers = await get(proxy.port, 20, host="shop.example.com")
    assert answers == [(200, "", f"tls:/r{i}") for i in range(20)]
    assert len(up.peers) == 1 and len(up.names) == 1  # one connection, one handshake
    assert up.hosts == ["shop.example.com"] * 20  # the Host is the client's, as over HTTP
    assert up.alpn == {"http/1.1"}
    assert proxy.pools.pool("v1").connections == 1  # type: ignore[union-attr]


async def test_wrong_ca_is_a_502_counted_as_tls(pki: Pki, running: list[Any]) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    other = pki.write_ca(trustme.CA(), "other.pem")
    proxy, registry = await proxy_for(
        running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {other}}}")
    )
    (status, reason, _), *_ = await get(proxy.port, 2)
    assert (status, reason) == (502, "upstream_tls")
    assert tls_errors(registry) == 2  # every failed handshake is counted against v1
    assert up.hosts == []
    ep = proxy.pools.pool("v1").endpoints[0]  # type: ignore[union-attr]
    assert ep.failures == 2 and not ep.ejected(asyncio.get_running_loop().time())


async def test_verify_false_accepts_any_certificate(
    pki: Pki, running: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    other = pki.write_ca(trustme.CA(), "other.pem")
    with caplog.at_level(logging.WARNING):
        proxy, _ = await proxy_for(
            running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {other}, verify: false}}")
        )
    assert "tls.verify is false" in caplog.text
    assert [a[0] for a in await get(proxy.port, 3)] == [200, 200, 200]


async def test_sni_is_the_configured_name(pki: Pki, running: list[Any]) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    ca = pki.write_ca(pki.ca, "ca.pem")
    tls = f"{{ca: {ca}, sni: v1.internal}}"
    proxy, _ = await proxy_for(running, proxy_config(f"127.0.0.1:{up.port}", tls))
    assert (await get(proxy.port))[0][0] == 200
    assert up.names == ["v1.internal"]


async def test_sni_defaults_to_the_endpoint_name(pki: Pki, running: list[Any]) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    ca = pki.write_ca(pki.ca, "ca.pem")
    proxy, _ = await proxy_for(running, proxy_config(f"localhost:{up.port}", f"{{ca: {ca}}}"))
    assert (await get(proxy.port))[0][0] == 200
    assert up.names == ["localhost"]


def write_client_cert(pki: Pki, client_ca: trustme.CA) -> str:
    """A client certificate from `client_ca` in two files -> the `cert`/`key` of `tls:`."""
    cert = client_ca.issue_cert("proxy.internal")
    cert.cert_chain_pems[0].write_to_path(str(pki.dir / "client.pem"))
    cert.private_key_pem.write_to_path(str(pki.dir / "client.key"))
    return f"cert: {pki.dir / 'client.pem'}, key: {pki.dir / 'client.key'}"


# TLS 1.2 refuses a missing client certificate in the handshake. TLS 1.3 does so after it,
# with an alert on the first read, which an asyncio server (aiohttp) drops unsent: the proxy
# sees a new connection closed before any byte, `upstream_reset`; with the alert (the
# blocking server below, like nginx or Go) it is `upstream_tls`.
@pytest.mark.parametrize(
    ("version", "reason"),
    [(ssl.TLSVersion.TLSv1_2, "upstream_tls"), (ssl.TLSVersion.TLSv1_3, "upstream_reset")],
)
async def test_mtls_needs_the_client_certificate(
    pki: Pki, running: list[Any], version: ssl.TLSVersion, reason: str
) -> None:
    client_ca = trustme.CA()
    ctx = pki.server_context(client_ca)
    ctx.maximum_version = version
    up = await start_tls_upstream(ctx)
    running.append(up)
    ca = pki.write_ca(pki.ca, "ca.pem")
    with_cert = f"{{ca: {ca}, {write_client_cert(pki, client_ca)}}}"
    proxy, _ = await proxy_for(running, proxy_config(f"127.0.0.1:{up.port}", with_cert))
    assert [a[0] for a in await get(proxy.port, 3)] == [200, 200, 200]
    assert len(up.peers) == 1
    bare, registry = await proxy_for(running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {ca}}}"))
    assert [a[:2] for a in await get(bare.port)] == [(502, reason)]
    assert tls_errors(registry) == (reason == "upstream_tls")


def serve_alerting(ctx: ssl.SSLContext) -> socket.socket:
    """A blocking TLS 1.3 server in a thread that refuses every handshake with its alert."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed by the test
            with conn, contextlib.suppress(OSError):
                try:
                    ctx.wrap_socket(conn, server_side=True).recv(1)
                except ssl.SSLError:
                    # a lingering close, as real servers do: closing with the client's
                    # request unread would send a reset that can overtake the alert
                    conn.shutdown(socket.SHUT_WR)
                    conn.settimeout(1.0)
                    while conn.recv(65536):
                        pass

    threading.Thread(target=serve, daemon=True).start()
    return listener


async def test_tls13_certificate_alert_is_upstream_tls(pki: Pki, running: list[Any]) -> None:
    listener = serve_alerting(pki.server_context(trustme.CA()))
    try:
        ca = pki.write_ca(pki.ca, "ca.pem")
        port = listener.getsockname()[1]
        proxy, registry = await proxy_for(
            running, proxy_config(f"127.0.0.1:{port}", f"{{ca: {ca}}}")
        )
        assert [a[:2] for a in await get(proxy.port)] == [(502, "upstream_tls")]
        assert tls_errors(registry) == 1
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        listener.close()


async def test_canary_of_plain_v1_and_https_v2(pki: Pki, running: list[Any]) -> None:
    plain = await start_upstream()
    running.append(plain)
    secure = await start_tls_upstream(pki.server_context())
    running.append(secure)
    ca = pki.write_ca(pki.ca, "ca.pem")
    text = f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: ["{plain.address}"]}}
  v2: {{endpoints: ["127.0.0.1:{secure.port}"], tls: {{ca: {ca}}}}}
routes:
  - name: default
    route: [{{destination: v1, weight: 50}}, {{destination: v2, weight: 50}}]
"""
    proxy, _ = await proxy_for(running, text)
    answers = await get(proxy.port, 40)
    assert {a[0] for a in answers} == {200}
    tls_answers = sum(a[2].startswith("tls:") for a in answers)
    assert 0 < tls_answers < 40 and len(plain.requests) == 40 - tls_answers
    assert len(secure.peers) == 1  # v2's connection kept alive between its requests


def test_https_upstream_on_uvloop(pki: Pki) -> None:
    """Production runs on uvloop: the handshake, its failure and the reuse behave the same."""

    async def scenario() -> None:
        running: list[Any] = []
        try:
            up = await start_tls_upstream(pki.server_context())
            running.append(up)
            good, bad = pki.write_ca(pki.ca, "ca.pem"), pki.write_ca(trustme.CA(), "bad.pem")
            proxy, _ = await proxy_for(
                running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {good}}}")
            )
            assert [a[0] for a in await get(proxy.port, 5)] == [200] * 5
            assert len(up.peers) == 1
            wrong, registry = await proxy_for(
                running, proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {bad}}}")
            )
            assert [a[:2] for a in await get(wrong.port)] == [(502, "upstream_tls")]
            assert tls_errors(registry) == 1
        finally:
            for thing in reversed(running):
                await thing.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_one_context_per_upstream_kept_across_reloads(pki: Pki) -> None:
    ca = pki.write_ca(pki.ca, "ca.pem")
    text = proxy_config("127.0.0.1:1", f"{{ca: {ca}}}")
    pools = Pools(config_from_yaml(text))
    first = pools.pool("v1")
    assert first is not None and first.ssl is not None
    pools.update(config_from_yaml(text))  # unchanged: the pool and its context stay
    assert pools.pool("v1") is first
    pools.update(config_from_yaml(text.replace("}}", ", sni: v1.internal}}", 1)))
    changed = pools.pool("v1")
    assert changed is not None and changed.ssl is not None and changed.ssl is not first.ssl
    pools.close()


# --- health checks ----------------------------------------------------------------------


async def test_active_health_check_over_https(pki: Pki, running: list[Any]) -> None:
    up = await start_tls_upstream(pki.server_context())
    running.append(up)
    ca = pki.write_ca(pki.ca, "ca.pem")
    check = ", health_check: {path: /health, interval: 0.05s}"
    text = proxy_config(f"127.0.0.1:{up.port}", f"{{ca: {ca}, sni: v1.internal}}", check)
    changes: list[tuple[str, str, bool]] = []
    checker = HealthChecker(lambda *change: changes.append(change))
    checker.update(config_from_yaml(text), lambda subset, address: False)
    try:
        async with asyncio.timeout(5):
            while not changes:
                await asyncio.sleep(0.01)
    finally:
        await checker.stop()
    assert changes[0] == ("v1", f"127.0.0.1:{up.port}", True)
    assert up.hosts[0] == f"127.0.0.1:{up.port}" and up.names[0] == "v1.internal"


# --- validation -------------------------------------------------------------------------


def _errors(tls: object) -> list[tuple[str, str]]:
    doc = {
        "listen": "127.0.0.1:0",
        "upstreams": {"v1": {"endpoints": ["127.0.0.1:1"], "tls": tls}},
        "routes": [{"name": "r", "route": [{"destination": "v1"}]}],
    }
    return validate(doc)[1]


def test_tls_empty_means_system_cas_and_verification() -> None:
    config, errors = validate(
        {
            "listen": "127.0.0.1:0",
            "upstreams": {"v1": {"endpoints": ["127.0.0.1:1"], "tls": {}}},
            "routes": [{"name": "r", "route": [{"destination": "v1"}]}],
        }
    )
    assert errors == [] and config is not None
    tls = config.upstreams[0].tls
    assert tls is not None and (tls.verify, tls.ca, tls.sni) == (True, "", "")


def test_tls_files_must_load(pki: Pki) -> None:
    missing = str(pki.dir / "missing.pem")
    junk = pki.dir / "junk.pem"
    junk.write_text("not a certificate\n")
    assert _errors({"ca": missing}) == [
        ("upstreams.v1.tls.ca", f"cannot read: {missing}: No such file or directory")
    ]
    ((path, message),) = _errors({"ca": str(junk)})
    assert path == "upstreams.v1.tls.ca" and message.startswith("not a PEM CA bundle")
    ((path, message),) = _errors({"cert": str(junk), "key": missing})
    assert path == "upstreams.v1.tls.key" and message.startswith("cannot read")
    ((path, message),) = _errors({"cert": str(junk), "key": str(junk)})
    assert path == "upstreams.v1.tls.cert" and "certificate and key" in message


def test_tls_keys_and_types() -> None:
    assert _errors({"cert": "/c.pem"}) == [
        ("upstreams.v1.tls.key", "is required with cert (a client certificate)")
    ]
    assert _errors({"key": "/k.pem"}) == [
        ("upstreams.v1.tls.cert", "is required with key (a client certificate)")
    ]
    assert _errors({"verify": "no"}) == [("upstreams.v1.tls.verify", "must be true or false")]
    assert _errors({"sni": "a b"}) == [("upstreams.v1.tls.sni", '"a b" is not a host name')]
    assert _errors({"server_name": "x"})[0][0] == "upstreams.v1.tls.server_name"
    assert _errors(None) == [("upstreams.v1.tls", "must be a mapping")]
