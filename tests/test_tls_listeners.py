"""TLS listeners (SPEC §6): real TLS from `trustme` certificates, real clients that verify
them, the real data plane on 127.0.0.1 (in-process, and `serve --workers 2` once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry
from util_servers import Upstream, config_from_yaml, raw_exchange

from proxy.config.validate import validate
from proxy.dataplane.server import ProxyServer
from proxy.dataplane.upstream import Pools
from proxy.metrics import ProxyMetrics
from proxy.routing.table import build_table

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Certs:
    ca: trustme.CA
    dir: Path

    def write(self, stem: str, *names: str) -> tuple[Path, Path]:
        cert = self.ca.issue_cert(*names)
        pem, key = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert.private_key_pem.write_to_path(str(key))
        cert.cert_chain_pems[0].write_to_path(str(pem))
        return pem, key

    def client(self, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    c = Certs(trustme.CA(), tmp_path)
    c.write("shop", "shop.test", "*.shop.test")
    c.write("api", "api.test")
    c.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return c


def tls_yaml(up: Upstream | str, d: Path, tls_extra: str = "") -> str:
    address = up if isinstance(up, str) else up.address
    return f"""
listeners:
  - {{name: web, listen: "127.0.0.1:0"}}
  - name: websecure
    listen: "127.0.0.2:0"
    tls:
      certificates:
        - {{cert: {d}/shop.pem, key: {d}/shop.key}}
        - {{cert: {d}/api.pem, key: {d}/api.key}}
{tls_extra}
access_log: false
upstreams:
  v1: {{endpoints: ["{address}"]}}
routes:
  - {{name: to-https, listeners: [web], redirect: {{scheme: https, status: 308}}}}
  - {{name: old, match: [{{path: {{prefix: /old}}}}], redirect: {{path: /new}}}}
  - {{name: default, route: [{{destination: v1}}]}}
"""


@dataclass
class Proxy:
    server: ProxyServer
    pools: Pools
    registry: CollectorRegistry

    @property
    def web(self) -> int:
        return self.server.ports["web"]

    @property
    def tls(self) -> int:
        return self.server.ports["websecure"]

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def start(text: str) -> Proxy:
    config = config_from_yaml(text)
    table, pools, registry = build_table(config), Pools(config), CollectorRegistry()
    server = ProxyServer(lambda: table, pools, ProxyMetrics(registry), None, config.limits)
    for x in config.all_listeners():
        await server.start("127.0.0.1", 0, listener=x.name, tls=x.tls)
    return Proxy(server, pools, registry)


@pytest.fixture
async def proxy(upstream: Upstream, certs: Certs) -> AsyncIterator[Proxy]:
    p = await start(tls_yaml(upstream, certs.dir))
    yield p
    await p.server.close()
    p.pools.close()


class Conn:
    """One HTTPS client connection: keep-alive requests, the server's certificate."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def peercert(self) -> dict:
        return self.writer.get_extra_info("ssl_object").getpeercert()

    async def get(self, path: str, host: str) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        fields = {k.lower(): v for k, v in fields.items()}
        body = await self.reader.readexactly(int(fields.get("content-length", "0")))
        return int(lines[0].split()[1]), fields, body

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


async def connect(
    port: int, ctx: ssl.SSLContext, name: str | None, host: str = "127.0.0.1"
) -> Conn:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, server_hostname=name), 5
    )
    return Conn(reader, writer)


async def fetch(port: int, ctx: ssl.SSLContext, name: str, path: str = "/") -> tuple[Any, ...]:
    conn = await connect(port, ctx, name)
    try:
        status, fields, body = await conn.get(path, name)
        return status, fields, body, conn.peercert
    finally:
        await conn.close()


def sans(peercert: dict) -> list[str]:
    return [v for k, v in peercert["subjectAltName"] if k == "DNS"]


async def eventually(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


# --- config ---------------------------------------------------------------------------------


def test_bad_certificate_files_are_reported_by_path(certs: Certs) -> None:
    d = certs.dir
    (d / "junk.pem").write_text("not a certificate\n")
    doc = {
        "listeners": [
            {"name": "web", "listen": "127.0.0.1:0"},
            {
                "name": "websecure",
                "listen": "127.0.0.1:1",
                "tls": {
                    "certificates": [
                        {"cert": str(d / "shop.pem"), "key": str(d / "api.key")},
                        {"cert": str(d / "missing.pem"), "key": str(d / "api.key")},
                    ],
                    "min_version": "1.1",
                    "client_ca": str(d / "junk.pem"),
                },
            },
        ],
        "upstreams": {"v1": {"endpoints": ["127.0.0.1:9"]}},
        "routes": [{"name": "r", "route": [{"destination": "v1"}]}],
    }
    config, errors = validate(doc)
    assert config is None
    paths = {path: message for path, message in errors}
    p = "listeners[1].tls"
    assert paths[f"{p}.certificates[0].key"] == f"does not match the certificate {d}/shop.pem"
    assert paths[f"{p}.certificates[1].cert"].startswith("cannot read: ")
    assert paths[f"{p}.client_ca"].startswith("not a CA bundle")
    assert f"{p}.min_version" in paths
    assert len(errors) == 4


# --- serving --------------------------------------------------------------------------------


async def test_https_get_reaches_a_plain_upstream_with_forwarded_proto(
    proxy: Proxy, upstream: Upstream, certs: Certs
) -> None:
    status, _, body, _ = await fetch(proxy.tls, certs.client(), "shop.test", "/a")
    assert status == 200 and json.loads(body)["path"] == "/a"
    assert upstream.requests[-1]["headers"]["X-Forwarded-Proto"] == "https"
    await raw_exchange(proxy.web, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert len(upstream.requests) == 1  # the plain listener only redirects


async def test_sni_picks_the_certificate_and_unknown_names_get_the_first(
    proxy: Proxy, certs: Certs
) -> None:
    ctx = certs.client()
    assert sans((await fetch(proxy.tls, ctx, "shop.test"))[3]) == ["shop.test", "*.shop.test"]
    assert sans((await fetch(proxy.tls, ctx, "api.test"))[3]) == ["api.test"]
    assert sans((await fetch(proxy.tls, ctx, "www.shop.test"))[3])[0] == "shop.test"
    loose = certs.client(check_hostname=False)
    for name in ("unknown.test", None):
        conn = await connect(proxy.tls, loose, name)
        assert sans(conn.peercert)[0] == "shop.test"
        await conn.close()


async def test_a_certificate_swapped_on_disk_serves_new_connections_only(
    proxy: Proxy, certs: Certs
) -> None:
    ctx = certs.client()
    kept = await connect(proxy.tls, ctx, "api.test")
    old_serial = kept.peercert["serialNumber"]
    certs.write("api", "api.test")  # a new certificate (new serial) at the same paths

    async def swapped() -> bool:
        return (await fetch(proxy.tls, ctx, "api.test"))[3]["serialNumber"] != old_serial

    await eventually(swapped)
    assert (await kept.get("/still", "api.test"))[0] == 200  # the open connection works on
    assert kept.peercert["serialNumber"] == old_serial
    await kept.close()
    reloads = "canaryproxy_tls_certificate_reloads_total"
    assert proxy.count(reloads, listener="websecure", result="ok") >= 1


async def test_a_bad_replacement_keeps_the_old_certificate_and_is_counted(
    proxy: Proxy, certs: Certs
) -> None:
    ctx = certs.client()
    serial = (await fetch(proxy.tls, ctx, "shop.test"))[3]["serialNumber"]
    (certs.dir / "shop.pem").write_text("-----BEGIN CERTIFICATE-----\ntruncated\n")
    reloads = "canaryproxy_tls_certificate_reloads_total"

    async def rejected() -> bool:
        return proxy.count(reloads, listener="websecure", result="rejected") == 1

    await eventually(rejected)
    assert (await fetch(proxy.tls, ctx, "shop.test"))[3]["serialNumber"] == serial
    proxy.server.reload_certificates()  # SIGHUP / POST /api/v1/reload: rejected again
    assert proxy.count(reloads, listener="websecure", result="rejected") == 2


async def test_mtls_accepts_a_client_certificate_from_the_ca_and_refuses_none(
    upstream: Upstream, certs: Certs
) -> None:
    p = await start(tls_yaml(upstream, certs.dir, f"      client_ca: {certs.dir}/ca.pem"))
    try:
        ctx = certs.client()
        certs.ca.issue_cert("client.test").configure_cert(ctx)
        assert (await fetch(p.tls, ctx, "shop.test"))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await fetch(p.tls, certs.client(), "shop.test")  # TLS 1.3: refused at first read
        assert len(upstream.requests) == 1
        assert (
            p.count(
                "canaryproxy_tls_handshake_errors_total",
                listener="websecure",
                reason="client_certificate",
            )
            == 1
        )
    finally:
        await p.server.close()
        p.pools.close()


async def test_min_version_1_3_refuses_a_tls_1_2_client(upstream: Upstream, certs: Certs) -> None:
    p = await start(tls_yaml(upstream, certs.dir, '      min_version: "1.3"'))
    try:
        old = certs.client(maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await fetch(p.tls, old, "shop.test")
        assert (await fetch(p.tls, certs.client(), "shop.test"))[0] == 200
        assert (
            p.count(
                "canaryproxy_tls_handshake_errors_total", listener="websecure", reason="version"
            )
            == 1
        )
    finally:
        await p.server.close()
        p.pools.close()


async def test_plain_http_to_the_tls_port_fails_cleanly_and_the_proxy_stays_up(
    proxy: Proxy, certs: Certs
) -> None:
    out = await raw_exchange(proxy.tls, b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n", timeout=3)
    assert b"HTTP/1.1 200" not in out
    assert (await fetch(proxy.tls, certs.client(), "shop.test"))[0] == 200
    assert (
        proxy.count(
            "canaryproxy_tls_handshake_errors_total", listener="websecure", reason="http_request"
        )
        == 1
    )


async def test_redirects_say_https_on_the_tls_listener_and_to_https_on_the_plain_one(
    proxy: Proxy, certs: Certs
) -> None:
    out = await raw_exchange(proxy.web, b"GET /a?b=1 HTTP/1.1\r\nHost: shop.test\r\n\r\n", 3)
    assert out.startswith(b"HTTP/1.1 308")
    assert b"\r\nLocation: https://shop.test/a?b=1\r\n" in out
    status, fields, _, _ = await fetch(proxy.tls, certs.client(), "shop.test", "/old/x")
    assert status == 302 and fields["location"] == f"https://shop.test:{proxy.tls}/new"


async def test_an_api_reload_loads_changed_certificates_at_once(
    upstream: Upstream, certs: Certs, tmp_path: Path
) -> None:
    from proxy.app import App

    cfg = tmp_path / "c.yaml"
    cfg.write_text(tls_yaml(upstream, certs.dir) + "admin: {listen: 127.0.0.1:0}\n")
    app = App(str(cfg), str(tmp_path / "s"), watch_interval=0)
    await app.start()
    try:
        port, ctx = app.listener_ports["websecure"], certs.client()
        conn = await connect(port, ctx, "api.test", "127.0.0.2")
        old = conn.peercert["serialNumber"]
        await conn.close()
        certs.write("api", "api.test")
        await app.reload_async()  # what SIGHUP and POST /api/v1/reload run
        conn = await connect(port, ctx, "api.test", "127.0.0.2")
        assert conn.peercert["serialNumber"] != old
        await conn.close()
        labels = {"listener": "websecure", "result": "ok"}
        assert app.registry.get_sample_value("canaryproxy_tls_certificate_reloads_total", labels)
    finally:
        await app.stop()


# --- serve --workers 2 ----------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _admin_get(port: int, path: str) -> str:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    return (await raw_exchange(port, head, timeout=3)).partition(b"\r\n\r\n")[2].decode()


async def test_workers_terminate_tls(upstream: Upstream, certs: Certs, tmp_path: Path) -> None:
    web, secure, admin = _free_port(), _free_port(), _free_port()
    text = tls_yaml(upstream, certs.dir).replace('"127.0.0.1:0"', f'"127.0.0.1:{web}"', 1)
    text = text.replace('"127.0.0.2:0"', f'"127.0.0.1:{secure}"')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text + f"admin: {{listen: 127.0.0.1:{admin}}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2",
        "--state-dir", str(tmp_path / "s"), cwd=ROOT, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ctx = certs.client()

        async def ready() -> bool:
            try:
                return (await fetch(secure, ctx, "api.test"))[0] == 200
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                return False

        await eventually(ready, 20)
        for _ in range(4):  # new connections: the kernel spreads them over both workers
            status, _, _, cert = await fetch(secure, ctx, "api.test")
            assert status == 200 and sans(cert) == ["api.test"]
        assert upstream.requests[-1]["headers"]["X-Forwarded-Proto"] == "https"
        for _ in range(6):  # failed handshakes, wherever the kernel puts them
            with contextlib.suppress(ConnectionError):  # the proxy may reset, as nginx does
                await raw_exchange(secure, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n", 3)
        metric = (
            'canaryproxy_tls_handshake_errors_total{listener="websecure",reason="http_request"}'
        )

        async def summed() -> bool:  # the supervisor's /metrics adds up every worker's count
            try:
                body = await _admin_get(admin, "/metrics")
            except ConnectionError:  # the admin API starts after the workers listen
                return False
            lines = [x for x in body.splitlines() if x.startswith(metric)]
            return bool(lines) and float(lines[0].split()[-1]) == 6

        await eventually(summed, 5)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
