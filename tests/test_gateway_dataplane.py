"""Gateway features through the real data plane (SPEC §6): virtual hosts (absolute-form too),
redirects, rewrites, direct responses, mirror lists, listeners and failover, with real aiohttp
upstreams and the real proxy on 127.0.0.1 (in-process, and `serve --workers 2` once)."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from util_servers import (
    ProxyHandle,
    Upstream,
    config_from_yaml,
    json_body,
    raw_exchange,
    start_proxy,
    start_upstream,
    status_of,
)

from proxy.dataplane.accesslog import AccessLog
from proxy.dataplane.upstream import PROBE_FIRST

ROOT = Path(__file__).resolve().parent.parent


def head_of(out: bytes) -> dict[str, str]:
    """Response fields, lower-case names (the last one of a name wins)."""
    lines = out.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}


def get(target: str, host: str | None = "a", method: str = "GET", extra: str = "") -> bytes:
    fields = (f"Host: {host}\r\n" if host is not None else "") + extra
    return f"{method} {target} HTTP/1.1\r\n{fields}Connection: close\r\n\r\n".encode()


async def ask(p: ProxyHandle, data: bytes, port: int | None = None) -> bytes:
    return await raw_exchange(port or p.port, data)


def ups(**named: Upstream | str) -> str:
    lines = ["upstreams:"]
    for name, u in named.items():
        address = u if isinstance(u, str) else u.address
        lines.append(f'  {name}: {{endpoints: ["{address}"]}}')
    return "\n".join(lines)


def dead_address() -> str:
    """An address nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# --- virtual hosts --------------------------------------------------------------------------
async def test_hosts_reach_their_own_upstreams_case_port_and_absolute_form() -> None:
    shop, api, other = [await start_upstream() for _ in range(3)]
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(shop=shop, api=api, other=other)}
routes:
  - {{name: shop, hosts: [shop.example.com], route: [{{destination: shop}}]}}
  - {{name: api, hosts: ["*.api.example.com"], route: [{{destination: api}}]}}
  - {{name: rest, route: [{{destination: other}}]}}
""")
    p = await start_proxy(cfg)
    try:
        cases = {
            "shop.example.com": shop,
            "SHOP.Example.COM:8080": shop,
            "shop.example.com.": shop,
            "v1.api.example.com": api,
            "a.b.API.example.com:81": api,
            "api.example.com": other,  # a wildcard needs one label or more before it
            "example.org": other,
        }
        for host, want in cases.items():
            before = len(want.requests)
            out = await ask(p, get("/x", host))
            assert status_of(out) == 200, host
            assert len(want.requests) == before + 1, host
            assert want.requests[-1]["headers"]["Host"] == host  # forwarded as received
        # absolute-form: the authority is the Host, for routing and upstream; the Host
        # field the client sent is ignored (RFC 9112 §3.2.2)
        for target, want in [
            ("http://shop.example.com/x?q=1", shop),
            ("HTTP://Shop.Example.com:8080/x?q=1", shop),
            ("http://v2.api.example.com/x?q=1", api),
        ]:
            before = len(want.requests)
            out = await ask(p, get(target, "example.org"))
            assert status_of(out) == 200 and len(want.requests) == before + 1, target
            seen = want.requests[-1]
            assert seen["path"] == "/x?q=1"
            assert seen["headers"].getall("Host") == [target.split("/")[2]]
        # HTTP/1.1 still needs a Host field (RFC 9112 §3.2), absolute-form or not
        assert status_of(await ask(p, get("http://shop.example.com?q=1", None))) == 400
        out = await ask(p, get("http://u@shop.example.com/x", "a"))  # userinfo: refused
        assert status_of(out) == 400
        out = await raw_exchange(p.port, b"GET http://shop.example.com/y HTTP/1.0\r\n\r\n")
        assert status_of(out) == 200 and shop.requests[-1]["headers"]["Host"] == "shop.example.com"
    finally:
        await p.close()
        for u in (shop, api, other):
            await u.close()


# --- redirects ------------------------------------------------------------------------------
REDIRECTS = [
    # (redirect, Host sent, target, Location expected; {port} = the listener's)
    ("{scheme: https, status: 301}", "shop.example.com", "/a?x=1", "https://shop.example.com/a?x=1"),
    ("{host: new.example.com, status: 302}", "shop.example.com:8080", "/a?x=1",
     "http://new.example.com:8080/a?x=1"),
    ("{port: 9090, status: 303}", "Shop.Example.com:8080", "/a?x=1",
     "http://shop.example.com:9090/a?x=1"),
    ("{path: /b, status: 307}", "shop.example.com:8080", "/old/a?x=1",
     "http://shop.example.com:8080/b?x=1"),
    ("{prefix: /new, status: 308}", "shop.example.com:8080", "/old/a?x=1",
     "http://shop.example.com:8080/new/a?x=1"),
    ("{prefix: /, status: 302}", "shop.example.com", "/old/a",
     "http://shop.example.com:{port}/a"),  # no port in Host: the listener's
]  # fmt: skip


@pytest.mark.parametrize("redirect,host,target,location", REDIRECTS)
async def test_redirect_answers_without_the_upstream(
    upstream: Upstream, redirect: str, host: str, target: str, location: str
) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=upstream)}
routes:
  - name: moved
    match: [{{path: {{prefix: /old}}}}, {{path: {{exact: /a}}}}]
    redirect: {redirect}
  - {{name: app, route: [{{destination: v1}}]}}
""")
    p = await start_proxy(cfg)
    try:
        out = await ask(p, get(target, host))
        status = int(redirect.rsplit("status: ", 1)[1].rstrip("}"))
        assert status_of(out) == status, out
        fields = head_of(out)
        assert fields["location"] == location.format(port=p.port)
        assert fields["content-length"] == "0" and out.endswith(b"\r\n\r\n")
        assert upstream.requests == []  # no upstream contact
        assert p.metrics.observed == [("moved", "moved", "", status)]
        assert p.metrics.errors == []
        out = await ask(p, get("/else", host))  # the other route still forwards
        assert status_of(out) == 200 and len(upstream.requests) == 1
    finally:
        await p.close()


async def test_redirect_keeps_the_connection_and_drops_a_request_body(upstream: Upstream) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=upstream)}
routes:
  - {{name: to-https, redirect: {{scheme: https, status: 308}}}}
""")
    p = await start_proxy(cfg)
    try:
        two = b"GET /a HTTP/1.1\r\nHost: s.example\r\n\r\n" + get("/b", "s.example")
        out = await ask(p, two)
        assert out.count(b"HTTP/1.1 308 Permanent Redirect\r\n") == 2
        assert b"Location: https://s.example/b\r\n" in out
        post = b"POST /c HTTP/1.1\r\nHost: s.example\r\nContent-Length: 3\r\n\r\nabc"
        out = await ask(p, post + get("/d", "s.example"))
        # answered before its body was read: the connection closes after it (as a 404 does)
        assert out.count(b" 308 ") == 1 and upstream.requests == []
        out = await raw_exchange(p.port, b"GET /e?f=1 HTTP/1.0\r\n\r\n")  # no Host at all
        assert head_of(out)["location"] == "https://127.0.0.1/e?f=1"
    finally:
        await p.close()


# --- rewrites -------------------------------------------------------------------------------
REWRITES = [
    # (match, rewrite, target received, target the upstream sees)
    ("{path: {prefix: /old}}", "{prefix: /new}", "/old/a?q=1", "/new/a?q=1"),
    ("{path: {prefix: /old/}}", "{prefix: /}", "/old/a/b", "/a/b"),
    ("{path: {prefix: /old}}", "{path: /exact}", "/old/a?q=1", "/exact?q=1"),
    ("{path: {prefix: /v1}}", '{regex: "^/v1/(.*)$", substitution: "/api/\\\\1"}', "/v1/users?id=7",
     "/api/users?id=7"),
]  # fmt: skip


@pytest.mark.parametrize("match,rewrite,target,seen", REWRITES)
async def test_rewrite_changes_only_the_forwarded_target(
    upstream: Upstream, tmp_path: Path, match: str, rewrite: str, target: str, seen: str
) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=upstream)}
routes:
  - {{name: app, match: [{match}], rewrite: {rewrite}, route: [{{destination: v1}}]}}
""")
    log = AccessLog(str(tmp_path / "access.log"))
    p = await start_proxy(cfg, access_log=log)
    try:
        out = await ask(p, get(target, "shop.example.com"))
        assert status_of(out) == 200
        assert json_body(out)["path"] == seen
        assert upstream.requests[-1]["headers"]["Host"] == "shop.example.com"
        assert p.metrics.observed == [("app", "app", "v1", 200)]
        log.flush()
        line = json.loads((tmp_path / "access.log").read_text().splitlines()[-1])
        assert line["path"] == target and line["version"] == "v1"
        assert line["rewritten"] == {"path": seen}
    finally:
        await p.close()
        log.close()


async def test_rewrite_host_is_the_host_upstream(upstream: Upstream, tmp_path: Path) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=upstream)}
routes:
  - name: shop
    hosts: [shop.example.com]
    match: [{{path: {{prefix: /old}}}}]
    rewrite: {{prefix: /new, host: shop.internal}}
    route: [{{destination: v1}}]
  - {{name: plain, route: [{{destination: v1}}]}}
""")
    log = AccessLog(str(tmp_path / "access.log"))
    p = await start_proxy(cfg, access_log=log)
    try:
        out = await ask(p, get("/old/x?y=2", "Shop.example.com:8080"))
        assert status_of(out) == 200
        got = upstream.requests[-1]
        assert got["path"] == "/new/x?y=2" and got["headers"].getall("Host") == ["shop.internal"]
        out = await raw_exchange(p.port, b"GET http://shop.example.com/old/z HTTP/1.0\r\n\r\n")
        assert status_of(out) == 200
        assert upstream.requests[-1]["headers"].getall("Host") == ["shop.internal"]
        out = await ask(p, get("/old/x", "other.example"))  # not this host: not rewritten
        assert upstream.requests[-1]["path"] == "/old/x"
        assert upstream.requests[-1]["headers"]["Host"] == "other.example"
        log.flush()
        lines = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()]
        assert [x["path"] for x in lines] == ["/old/x?y=2", "/old/z", "/old/x"]
        assert lines[0]["rewritten"] == {"path": "/new/x?y=2", "host": "shop.internal"}
        assert "rewritten" not in lines[2] and "failover" not in lines[2]
        assert [o[0] for o in p.metrics.observed] == ["shop", "shop", "plain"]
    finally:
        await p.close()
        log.close()


# --- direct responses -----------------------------------------------------------------------
async def test_direct_response_status_body_and_headers(upstream: Upstream) -> None:
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=upstream)}
routes:
  - name: teapot
    match: [{{path: {{exact: /tea}}}}]
    direct_response:
      status: 418
      body: "short and stout\\n"
      headers: {{content-type: text/plain, x-kind: teapot, content-length: "999"}}
  - {{name: gone, match: [{{path: {{exact: /gone}}}}], direct_response: {{status: 204}}}}
  - {{name: app, route: [{{destination: v1}}]}}
""")
    p = await start_proxy(cfg)
    try:
        out = await ask(p, get("/tea"))
        assert status_of(out) == 418 and out.endswith(b"\r\n\r\nshort and stout\n")
        fields = head_of(out)
        assert fields["content-type"] == "text/plain" and fields["x-kind"] == "teapot"
        assert fields["content-length"] == "16"  # ours, not the configured one
        out = await ask(p, get("/tea", method="HEAD"))
        assert status_of(out) == 418 and out.endswith(b"\r\n\r\n")
        assert head_of(out)["content-length"] == "16"
        out = await ask(p, get("/gone"))
        assert status_of(out) == 204 and "content-length" not in head_of(out)
        assert upstream.requests == []
        assert p.metrics.observed == [
            ("teapot", "teapot", "", 418),
            ("teapot", "teapot", "", 418),
            ("gone", "gone", "", 204),
        ]
    finally:
        await p.close()


# --- mirrors --------------------------------------------------------------------------------
async def test_mirror_list_sends_a_copy_to_each() -> None:
    main, m1, m2 = [await start_upstream() for _ in range(3)]
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=main, shadow1=m1, shadow2=m2)}
routes:
  - name: app
    rewrite: {{prefix: /new}}
    match: [{{path: {{prefix: /old}}}}]
    route: [{{destination: v1}}]
    mirror: [{{destination: shadow1}}, {{destination: shadow2, percent: 100}}]
""")
    p = await start_proxy(cfg)
    try:
        for i in range(3):
            body = b"POST /old/%d HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi" % i
            assert status_of(await ask(p, body + get("/old/x"))) == 200
        deadline = time.monotonic() + 5
        while (len(m1.requests) < 6 or len(m2.requests) < 6) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for m in (m1, m2):
            assert sorted(r["path"] for r in m.requests) == sorted(r["path"] for r in main.requests)
            assert {r["method"] for r in m.requests} == {"POST", "GET"}
        assert all(r["path"].startswith("/new/") for r in m1.requests)  # the forwarded copy
        assert sorted(p.metrics.mirrors) == [("app", "shadow1")] * 6 + [("app", "shadow2")] * 6
    finally:
        await p.close()
        for u in (main, m1, m2):
            await u.close()


# --- listeners ------------------------------------------------------------------------------
def two_listeners(upstream: Upstream | str) -> str:
    return f"""
listeners:
  - {{name: web, listen: "127.0.0.1:0"}}
  - {{name: internal, listen: "127.0.0.2:0"}}
access_log: false
{ups(v1=upstream)}
routes:
  - name: to-https
    listeners: [web]
    match: [{{path: {{prefix: /}}}}]
    redirect: {{scheme: https, port: 8443, status: 301}}
  - {{name: app, route: [{{destination: v1}}]}}
"""


async def test_a_listener_only_redirect_route(upstream: Upstream) -> None:
    p = await start_proxy(config_from_yaml(two_listeners(upstream)))
    try:
        ports = p.ports
        assert list(ports) == ["web", "internal"] and p.port == ports["web"]
        out = await ask(p, get("/a?b=1", "shop.example.com"), ports["web"])
        assert status_of(out) == 301
        assert head_of(out)["location"] == "https://shop.example.com:8443/a?b=1"
        out = await ask(p, get("/a?b=1", "shop.example.com"), ports["internal"])
        assert status_of(out) == 200 and json_body(out)["path"] == "/a?b=1"
        assert p.metrics.observed == [("to-https", "to-https", "", 301), ("app", "app", "v1", 200)]
    finally:
        await p.close()


def test_a_reload_cannot_add_or_move_listeners(caplog: pytest.LogCaptureFixture) -> None:
    from proxy.control import warn_restart_only

    old = config_from_yaml(two_listeners("127.0.0.1:1"))
    moved = config_from_yaml(two_listeners("127.0.0.1:1").replace("127.0.0.2:0", "127.0.0.3:0"))
    plain = config_from_yaml(two_listeners("127.0.0.1:1").replace("listeners: [web]", ""))
    with caplog.at_level("WARNING", logger="canaryproxy"):
        warn_restart_only(old, plain)  # routes changed, listeners not
        assert caplog.messages == []
        warn_restart_only(old, moved)
    assert caplog.messages == ["listeners changed; that takes effect at the next restart"]


# --- failover -------------------------------------------------------------------------------
def failover_config(stable: Upstream, canary: str, failover: str = "") -> str:
    """`default` splits 50/50; `pinned` (/p) sends the preview header to v2 (weight 0)."""
    return f"""
listen: 127.0.0.1:0
access_log: false
{ups(v1=stable, v2=canary)}
routes:
  - name: pinned
    match: [{{path: {{prefix: /p}}}}]
    preview: {{}}
    route: [{{destination: v1, weight: 100}}, {{destination: v2, weight: 0}}]
    {failover}
  - name: default
    route: [{{destination: v1, weight: 50}}, {{destination: v2, weight: 50}}]
    {failover}
"""


PIN = "x-canary-preview: 1\r\n"


def pool_status(p: ProxyHandle, name: str) -> dict[str, Any]:
    return next(u for u in p.pools.status() if u["name"] == name)


async def test_dead_canary_fails_over_to_stable_and_is_counted(
    upstream: Upstream, tmp_path: Path
) -> None:
    log = AccessLog(str(tmp_path / "access.log"))
    p = await start_proxy(config_from_yaml(failover_config(upstream, dead_address())), None, log)
    try:
        marks = []
        for i in range(30):
            method = "POST" if i % 2 else "GET"
            out = await ask(p, get("/x", extra="Content-Length: 0\r\n", method=method))
            assert status_of(out) == 200, out
            marks.append(head_of(out).get("x-canaryproxy-failover"))
        out = await ask(p, get("/p", extra=PIN))  # pinned to v2
        assert status_of(out) == 200 and head_of(out)["x-canaryproxy-failover"] == "v2->v1"
        marks.append("v2->v1")
        assert len(upstream.requests) == 31  # every request answered by the stable version
        failed = [o for o in p.metrics.observed if o[2] == "v2"]
        assert 1 <= len(failed) == marks.count("v2->v1") and set(marks) <= {None, "v2->v1"}
        # the first refusal is a 502 (then the endpoint is ejected: 503 no healthy endpoint)
        assert failed[0][3] == 502 and {f[3] for f in failed[1:]} <= {503}
        assert p.metrics.errors[0] == ("v2", "connect")
        assert set(p.metrics.errors[1:]) <= {("v2", "no_healthy")}
        assert len(p.metrics.errors) == len(failed)
        served = [o for o in p.metrics.observed if o[2] != "v2"]
        assert served == [("default", "default", "v1", 200)] * 30 + [
            ("pinned", "pinned", "v1", 200)
        ]
        log.flush()
        lines = [json.loads(x) for x in (tmp_path / "access.log").read_text().splitlines()]
        assert len(lines) == 31 and all(x["version"] == "v1" for x in lines)
        assert [x.get("failover") for x in lines] == marks
    finally:
        await p.close()
        log.close()


async def test_failover_off_keeps_the_errors(upstream: Upstream) -> None:
    cfg = config_from_yaml(failover_config(upstream, dead_address(), 'failover: "off"'))
    p = await start_proxy(cfg)
    try:
        codes = []
        for _ in range(4):
            out = await ask(p, get("/p", extra=PIN))
            assert "x-canaryproxy-failover" not in head_of(out)
            codes.append((status_of(out), head_of(out)["x-canaryproxy-error"]))
        # refused, then ejected at once (the last endpoint too): a fast 503 until a probe
        # connects again
        assert codes == [(502, "upstream_connect_refused")] + [(503, "no_healthy_upstream")] * 3
        assert upstream.requests == []
        assert [o[2:] for o in p.metrics.observed] == [("v2", 502)] + [("v2", 503)] * 3
    finally:
        await p.close()


async def test_failover_never_resends_bytes_that_reached_an_upstream(upstream: Upstream) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the request reached it
        writer.transport.abort()

    canary = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    address = f"127.0.0.1:{canary.sockets[0].getsockname()[1]}"
    p = await start_proxy(config_from_yaml(failover_config(upstream, address)))
    try:
        post = b"POST /p HTTP/1.1\r\nHost: a\r\nx-canary-preview: 1\r\nContent-Length: 2\r\n"
        out = await ask(p, post + b"Connection: close\r\n\r\nhi")
        assert status_of(out) == 502 and head_of(out)["x-canaryproxy-error"] == "upstream_reset"
        assert upstream.requests == [] and "x-canaryproxy-failover" not in head_of(out)
    finally:
        await p.close()
        canary.close()
        await canary.wait_closed()


async def test_refused_endpoint_is_ejected_until_a_probe_connects(upstream: Upstream) -> None:
    address = dead_address()
    p = await start_proxy(config_from_yaml(failover_config(upstream, address)))
    back: Upstream | None = None
    try:
        await ask(p, get("/p", extra=PIN))
        assert pool_status(p, "v2")["endpoints"][0]["ejected"]  # the last endpoint, at once
        await asyncio.sleep(PROBE_FIRST + 0.2)
        assert pool_status(p, "v2")["endpoints"][0]["ejected"]  # a refused probe keeps it out
        back = await _upstream_on(int(address.rsplit(":", 1)[1]))
        deadline = time.monotonic() + 3 * PROBE_FIRST + 2
        while pool_status(p, "v2")["endpoints"][0]["ejected"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert time.monotonic() < deadline, "the probe did not bring the endpoint back"
        out = await ask(p, get("/p", extra=PIN))
        assert status_of(out) == 200 and out.endswith(b"back")
        assert "x-canaryproxy-failover" not in head_of(out) and back.requests == [{"path": "/p"}]
    finally:
        await p.close()
        if back is not None:
            await back.close()


async def _upstream_on(port: int) -> Upstream:
    box: list[Upstream] = []

    async def record(request: web.Request) -> web.Response:
        box[0].requests.append({"path": request.path_qs})
        return web.Response(text="back")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    box.append(Upstream(runner, port))
    return box[0]


# --- serve --workers 2 ----------------------------------------------------------------------
def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def test_workers_serve_every_listener_and_host(tmp_path: Path) -> None:
    shop, other = await start_upstream(), await start_upstream()
    web_port, internal_port, admin = _free_port(), _free_port("127.0.0.2"), _free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
listeners:
  - {{name: web, listen: "127.0.0.1:{web_port}"}}
  - {{name: internal, listen: "127.0.0.2:{internal_port}"}}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
{ups(shop=shop, other=other)}
routes:
  - {{name: to-https, listeners: [web], hosts: [shop.example.com], redirect: {{scheme: https}}}}
  - {{name: shop, hosts: [shop.example.com], route: [{{destination: shop}}]}}
  - {{name: rest, route: [{{destination: other}}]}}
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2",
        "--state-dir", str(tmp_path / "s"), cwd=ROOT, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _ready(admin, proc)
        for _ in range(6):  # new connections: the kernel spreads them over both workers
            out = await raw_exchange(web_port, get("/a", "Shop.Example.com"))
            assert status_of(out) == 302  # the default status
            assert head_of(out)["location"] == "https://shop.example.com/a"
            out = await raw_exchange(web_port, get("/a", "other.example"))
            assert status_of(out) == 200
            url = f"http://127.0.0.2:{internal_port}/a"
            async with (
                aiohttp.ClientSession() as s,
                s.get(url, headers={"Host": "shop.example.com"}) as r,
            ):
                assert r.status == 200
        assert len(shop.requests) == 6 and len(other.requests) == 6
        status = await _admin_json(admin, "/api/v1/status")
        assert [w["alive"] for w in status["workers"]] == [True, True]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
        await shop.close()
        await other.close()


async def _ready(admin: int, proc: Any) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.returncode is None:
        try:
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("serve --workers 2 did not become ready")


async def _admin_json(admin: int, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}{path}") as r:
        return await r.json()
