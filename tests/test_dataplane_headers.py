"""Header rules: pure functions of proxy.headers, then the same rules through the real proxy."""

from __future__ import annotations

import pytest
from aiohttp import web
from util_servers import (
    config_from_yaml,
    json_body,
    raw_exchange,
    simple_config,
    start_proxy,
    start_upstream,
)

from proxy import headers as hdr
from proxy.config.schema import HeaderOps, HeaderPolicy
from proxy.dataplane.request import our_via


@pytest.mark.parametrize(
    "value,ok",
    [
        (b"abc-123_x.Y", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"semi;colon", False),
    ],
)
def test_valid_request_id(value: bytes, ok: bool) -> None:
    assert hdr.valid_request_id(value) is ok


def test_connection_cannot_nominate_protected_fields() -> None:
    got = hdr.nominated([b"keep-alive, X-Secret", b" Host ,content-length, X-Forwarded-For, via"])
    assert got == frozenset({b"keep-alive", b"x-secret"})


@pytest.mark.parametrize(
    "xff,hops,client",
    [
        (None, 0, "10.0.0.9"),
        (b"1.1.1.1, 2.2.2.2", 0, "10.0.0.9"),
        (b"1.1.1.1, 2.2.2.2", 1, "2.2.2.2"),
        (b"1.1.1.1, 2.2.2.2", 2, "1.1.1.1"),
        (b"1.1.1.1", 5, "1.1.1.1"),
    ],
)
def test_client_address_after_trusted_hops(xff, hops, client) -> None:
    assert hdr.client_address("10.0.0.9", xff, hops) == client


def test_request_lines_strip_hop_by_hop_and_apply_ops() -> None:
    headers = [
        (b"host", b"Host", b"a"),
        (b"keep-alive", b"Keep-Alive", b"timeout=5"),
        (b"te", b"TE", b"trailers"),
        (b"x-secret", b"X-Secret", b"s"),
        (b"x-drop", b"X-Drop", b"d"),
        (b"x-request-id", b"X-Request-Id", b"old"),
        (b"accept", b"Accept", b"*/*"),
    ]
    route = HeaderPolicy(
        request=HeaderOps(set=(("X-Env", "prod"),), add=(("X-Tag", "t"),), remove=("X-Drop",))
    )
    dest = HeaderPolicy(request=HeaderOps(set=(("X-Version", "v2"),)))
    policy = hdr.build_policy([route, dest])
    out = hdr.request_lines(headers, frozenset({b"x-secret"}), b"1.2.3.4", b"http", b"rid", policy)
    assert out == (
        b"Host: a\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: http\r\n"
        b"X-Request-Id: rid\r\nVia: 1.1 canaryproxy\r\nX-Env: prod\r\nX-Tag: t\r\nX-Version: v2\r\n"
    )


def test_trusted_hop_keeps_incoming_forwarded_proto() -> None:
    headers = [(b"x-forwarded-proto", b"X-Forwarded-Proto", b"https")]
    out = hdr.request_lines(headers, frozenset(), b"1.2.3.4", None, b"r", hdr.build_policy([]))
    assert out.startswith(b"X-Forwarded-Proto: https\r\n")
    assert out.count(b"X-Forwarded-Proto") == 1


def test_response_lines_add_via_and_sticky_cookie() -> None:
    headers = [
        (b"connection", b"Connection", b"x-hop"),
        (b"x-hop", b"X-Hop", b"1"),
        (b"content-type", b"Content-Type", b"text/plain"),
        (b"transfer-encoding", b"Transfer-Encoding", b"chunked"),
    ]
    policy = hdr.build_policy([])
    out = hdr.response_lines(headers, hdr.nominated([b"x-hop"]), policy, "v=v2; Path=/")
    assert (
        out == b"Content-Type: text/plain\r\nVia: 1.1 canaryproxy\r\nSet-Cookie: v=v2; Path=/\r\n"
    )


async def test_forwarding_headers_through_the_proxy() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"headers": [[k, v] for k, v in request.headers.items()]},
            headers={
                "Connection": "x-internal",
                "X-Internal": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authenticate": "Basic",
                "X-Kept": "yes",
            },
        )

    up = await start_upstream(handler)
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: ["{up.address}"]}}
routes:
  - name: default
    route:
      - destination: v1
        headers: {{request: {{set: {{x-version: v1}}}}, response: {{add: {{x-served-by: v1}}}}}}
    headers:
      request: {{set: {{x-env: prod}}, remove: [x-remove-me]}}
      response: {{remove: [x-kept]}}
""")
    p = await start_proxy(cfg)
    try:
        out = await raw_exchange(
            p.port,
            b"GET /h HTTP/1.1\r\nHost: svc\r\nConnection: close, X-Secret, Host, X-Forwarded-For\r\n"
            b"X-Secret: s\r\nKeep-Alive: 1\r\nTE: trailers\r\nUpgrade: h2c\r\n"
            b"Proxy-Authorization: Basic x\r\nProxy-Connection: keep-alive\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 9.9.9.9\r\n"
            b"X-Forwarded-Proto: https\r\nX-Request-Id: bad id!\r\nX-Remove-Me: 1\r\n\r\n",
        )
        head, _ = out.split(b"\r\n\r\n", 1)
        sent = {k.lower(): v for k, v in json_body(out)["headers"]}
        for gone in (
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "proxy-connection",
            "x_forwarded_for",
            "x-remove-me",
        ):
            assert gone not in sent, gone
        assert sent["host"] == "svc"
        assert sent["x-forwarded-for"] == "9.9.9.9, 127.0.0.1"
        assert sent["x-forwarded-proto"] == "http"
        assert len(sent["x-request-id"]) == 32 and sent["x-request-id"] != "bad id!"
        assert sent["via"] == "1.1 canaryproxy"
        assert sent["x-env"] == "prod" and sent["x-version"] == "v1"
        lower = head.lower()
        assert b"x-internal" not in lower and b"keep-alive:" not in lower
        assert b"proxy-authenticate" not in lower and b"x-kept" not in lower
        assert b"via: 1.1 canaryproxy" in lower and b"x-served-by: v1" in lower
        out = await raw_exchange(
            p.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: keep.me-1\r\nConnection: close\r\n\r\n",
        )
        assert {k.lower(): v for k, v in json_body(out)["headers"]}["x-request-id"] == "keep.me-1"
    finally:
        await p.close()
        await up.close()


async def test_sticky_cookie_is_set_on_the_response() -> None:
    up = await start_upstream()
    cfg = config_from_yaml(f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
  v1: {{endpoints: ["{up.address}"]}}
routes:
  - name: default
    route: [{{destination: v1}}]
    sticky: {{cookie: version, max_age: 60}}
""")
    p = await start_proxy(cfg)
    try:
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        head = out.split(b"\r\n\r\n", 1)[0]
        assert b"Set-Cookie: version=v1" in head
    finally:
        await p.close()
        await up.close()


@pytest.mark.parametrize(
    "value,looped",
    [
        (b"1.1 canaryproxy", True),
        (b"1.0 edge, 1.1 CanaryProxy (v2)", True),
        (b"HTTP/1.1 canaryproxy", True),
        (b"1.1 edge", False),
        (b"1.1 canaryproxy-edge", False),
        (b"1.1 other (canaryproxy)", False),
    ],
)
def test_our_via_finds_our_own_hop(value: bytes, looped: bool) -> None:
    assert our_via(value) is looped


async def test_a_request_that_already_passed_through_us_is_a_loop() -> None:
    up = await start_upstream()
    p = await start_proxy(simple_config({"v1": [up.address]}))
    try:
        out = await raw_exchange(
            p.port,
            b"GET /a HTTP/1.1\r\nHost: a\r\nVia: 1.0 edge\r\nVia: 1.1 canaryproxy\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: a\r\nVia: 1.1 edge\r\nConnection: close\r\n\r\n",
        )
        first, second = out.split(b"HTTP/1.1 ")[1:]
        assert first.startswith(b"508 ") and b"x-canaryproxy-error: loop_detected" in first
        assert second.startswith(b"200 ")  # the connection stays usable
        assert [r["path"] for r in up.requests] == ["/b"]  # the looped one was never forwarded
    finally:
        await p.close()
        await up.close()
