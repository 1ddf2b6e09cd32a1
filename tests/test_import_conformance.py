"""Gateway API HTTPRoute conformance scenarios, reproduced from the spec's conformance suite
(kubernetes-sigs/gateway-api conformance/tests) with our own manifests: translate, start the
real proxy and real upstreams, send real requests, check what the suite checks.

Hostname intersection and precedence, matching across routes, path match order, redirects
(scheme, port, hostname, path, status), URL rewrites with header modifiers, request and
response header modifiers, several mirrors, rules without a valid backend (500).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_import_common import Answer, Upstreams, ask, serve, upstreams
from util_servers import ProxyHandle

BACKENDS = ["backend-v1", "backend-v2", "backend-v3"]


@pytest.fixture
async def ups() -> AsyncIterator[Upstreams]:
    async with upstreams() as holder:
        yield holder


async def answers(
    proxy: ProxyHandle, cases: list[tuple[str, str]], port: int | None = None
) -> list[Answer]:
    return [await ask(proxy, path, host, port=port) for host, path in cases]


HOSTNAME_CASES = [
    ("very.specific.com", "/s1", "backend-v1"),
    ("very.specific.com:1234", "/s1", "backend-v1"),  # the port of Host is not matched
    ("non.matching.com", "/s1", None),
    ("foo.nonmatchingwildcard.io", "/s1", None),
    ("foo.wildcard.io", "/s1", None),
    ("very.specific.com", "/non-matching-prefix", None),
    ("foo.wildcard.io", "/s2", "backend-v2"),
    ("bar.wildcard.io", "/s2", "backend-v2"),
    ("foo.bar.wildcard.io", "/s2", "backend-v2"),
    ("non.matching.com", "/s2", None),
    ("wildcard.io", "/s2", None),
    ("very.specific.com", "/s2", None),
    ("very.specific.com", "/s3", "backend-v3"),
    ("foo.specific.com", "/s3", None),
    ("foo.wildcard.io", "/s3", None),
    ("foo.anotherwildcard.io", "/s4", "backend-v1"),
    ("foo.bar.anotherwildcard.io", "/s4", "backend-v1"),
    ("anotherwildcard.io", "/s4", None),
    ("very.specific.com", "/s4", None),
    ("specific.but.wrong.com", "/s5", None),
    ("wildcard.io", "/s5", None),
]


async def test_hostname_intersection(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-hostnames.yaml"], BACKENDS)
    port = proxy.ports["http-80"]
    try:
        got = await answers(proxy, [(h, p) for h, p, _ in HOSTNAME_CASES], port)
    finally:
        await proxy.close()
    for (host, path, backend), answer in zip(HOSTNAME_CASES, got, strict=True):
        if backend is None:
            assert answer.status == 404, (host, path)
        else:
            assert (answer.status, answer.name) == (200, backend), (host, path)


ACROSS_CASES = [
    ("example.com", "/", {}, "backend-v1"),
    ("example.com", "/example", {}, "backend-v1"),
    ("example.net", "/example", {}, "backend-v1"),
    ("example.com", "/example", {"Version": "one"}, "backend-v1"),
    ("example.com", "/v2", {}, "backend-v2"),
    ("example.net", "/v2", {}, "backend-v1"),
    ("example.com", "/v2/example", {}, "backend-v2"),
    ("example.com", "/", {"Version": "two"}, "backend-v2"),
    ("order.example.com", "/match/exact/one", {}, "backend-v3"),
    ("order.example.com", "/match/exact", {}, "backend-v2"),
    ("order.example.com", "/match", {}, "backend-v1"),
    ("order.example.com", "/match/prefix/one/any", {}, "backend-v2"),
    ("order.example.com", "/match/prefix/any", {}, "backend-v1"),
    ("order.example.com", "/match/any", {}, "backend-v3"),
]


async def test_matching_across_routes_and_path_match_order(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-across-routes.yaml"], BACKENDS)
    try:
        got = [await ask(proxy, p, h, headers=hs) for h, p, hs, _ in ACROSS_CASES]
        box = await ask(proxy, "/matchbox", "order.example.com")
    finally:
        await proxy.close()
    for (host, path, _, backend), answer in zip(ACROSS_CASES, got, strict=True):
        assert answer.name == backend, (host, path)
    assert box.status == 404  # PathPrefix /match/ is element-wise


async def test_redirects_scheme_port_host_path_and_status(ups: Upstreams) -> None:
    """Needs the data plane's redirect answers."""
    proxy = await serve(ups, "gateway", ["gateway-redirects.yaml"], ["backend-v1"])
    host, port = "redirect.example.com", proxy.port
    cases = {
        "/scheme-nil-and-port-nil": (302, f"http://example.org:{port}/scheme-nil-and-port-nil"),
        "/scheme-nil-and-port-8080": (302, "http://example.org:8080/scheme-nil-and-port-8080"),
        "/scheme-https-and-port-nil": (302, "https://example.org/scheme-https-and-port-nil"),
        "/scheme-https-and-port-8443": (302, "https://example.org:8443/scheme-https-and-port-8443"),
        "/original-prefix/lemon": (302, f"http://{host}:{port}/replacement-prefix/lemon"),
        "/full/path/original": (302, f"http://{host}:{port}/full-path-replacement"),
        "/path-and-status": (301, f"http://{host}:{port}/replacement-prefix"),
        "/see-other": (303, f"http://example.org:{port}/see-other"),
        "/temporary/x?q=1": (307, f"http://example.org:{port}/temporary/x?q=1"),
        "/permanent": (308, f"http://example.org:{port}/permanent"),
    }
    try:
        got = {path: await ask(proxy, path, host) for path in cases}
        plain = await ask(proxy, "/original-prefixed", host)  # not under /original-prefix
    finally:
        await proxy.close()
    for path, (status, location) in cases.items():
        assert (got[path].status, got[path].headers.get("Location")) == (status, location), path
    assert plain.name == "backend-v1"


async def test_rewrites_with_header_modifiers(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-rewrites.yaml"], ["backend-v1", "backend-v2"])
    host = "rewrite.example.com"
    cases = {
        "/prefix/one/two": "/one/two",
        "/strip-prefix/three": "/three",
        "/strip-prefix": "/",
        "/full/one/two": "/one",
        "/full/rewrite-path-and-modify-headers/test": "/test",
        "/host-and-prefix/a?b=c": "/moved/a?b=c",
    }
    try:
        got = {path: await ask(proxy, path, host) for path in cases}
        headed = await ask(proxy, "/full/rewrite-path-and-modify-headers/test", host,
                           headers={"X-Header-Set": "old", "X-Header-Remove": "gone"})  # fmt: skip
        rehost = await ask(proxy, "/rewrite-host/x", host)
    finally:
        await proxy.close()
    for path, sent in cases.items():
        assert got[path].body["path"] == sent, path
    h = headed.body["headers"]
    assert h["x-header-set"] == "set-overwrites-values" and h["x-header-add"] == "header-val-1"
    assert "x-header-remove" not in h
    # the hostname is rewritten and the header modifier of the same rule still applies
    assert rehost.body["headers"]["host"] == "one.example.org"
    assert rehost.body["headers"]["x-header-add"] == "host-kept"
    assert got["/host-and-prefix/a?b=c"].body["headers"]["host"] == "two.example.org"
    assert got["/host-and-prefix/a?b=c"].body["headers"]["x-header-set"] == "first"


async def test_header_modifiers_both_ways(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-filters.yaml"], BACKENDS)
    try:
        answer = await ask(proxy, "/set", "filters.example.com",
                           headers={"X-Header-Set": "old", "X-Header-Add": "first",
                                    "X-Header-Remove": "gone"})  # fmt: skip
    finally:
        await proxy.close()
    sent = answer.body["headers"]
    assert sent["x-header-set"] == "set-overwrites-values"
    assert "x-header-remove" not in sent
    assert answer.headers["x-response-set"] == "set"
    assert "x-upstream-secret" not in {k.lower() for k in answer.headers}


async def test_header_add_appends_to_what_the_client_sent(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-filters.yaml"], BACKENDS)
    try:
        answer = await ask(proxy, "/set", "filters.example.com", headers={"X-Header-Add": "first"})
    finally:
        await proxy.close()
    assert answer.body["headers"]["x-header-add"] in (
        "first,add-appends-values",
        "first, add-appends-values",
    )


async def test_several_mirrors_each_get_the_request(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-filters.yaml"], BACKENDS)
    try:
        answer = await ask(proxy, "/mirror/x", "filters.example.com")
        async with asyncio.timeout(5):
            while not all(any(r["path"] == "/mirror/x" for r in ups.started[n].requests)
                          for n in ("backend-v2", "backend-v3")):  # fmt: skip
                await asyncio.sleep(0.02)
    finally:
        await proxy.close()
    assert answer.name == "backend-v1"


async def test_rules_without_a_valid_backend_answer_500(ups: Upstreams) -> None:
    """Needs the data plane's direct_response answers."""
    proxy = await serve(ups, "gateway", ["gateway-filters.yaml"], BACKENDS)
    try:
        none = await ask(proxy, "/no-backends", "filters.example.com")
        invalid = await ask(proxy, "/invalid-kind/x", "filters.example.com")
    finally:
        await proxy.close()
    assert (none.status, invalid.status) == (500, 500)
    assert not ups.started["backend-v1"].requests
