"""Imported manifests served by the real proxy: real aiohttp upstreams, real HTTP traffic.

Istio's bookinfo tasks (request routing: everyone to v1, jason to reviews v2; traffic
shifting: 50/50 to v3, then all to v3) and Flagger's tutorials (the podinfo canary with its
load-test webhook; the nginx A/B test by header and cookie).
"""

from __future__ import annotations

import asyncio
import pathlib
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from test_import_common import Upstreams, ask, local, manifest, serve, upstreams

from proxy.app import App
from proxy.importers import translate


@pytest.fixture
async def ups() -> AsyncIterator[Upstreams]:
    async with upstreams() as holder:
        yield holder


BOOKINFO = ["productpage-v1", "reviews-v1", "ratings-v1", "details-v1"]


async def test_istio_weight_split_serves_both_versions(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", ["istio-weights.yaml"], ["v1", "v2"])
    try:
        seen = Counter([(await ask(proxy, "/", "reviews")).name for _ in range(200)])
    finally:
        await proxy.close()
    # 90/10 random: v2's count is Binomial(200, 0.1), mean 20; 5..45 is far beyond 5 sigma.
    assert seen["v1"] + seen["v2"] == 200 and 5 <= seen["v2"] <= 45


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"user-id": "test-user-001"}, "v2"),
        ({"Cookie": "theme=dark; beta_tester=true"}, "v2"),
        ({"x-region": "beijing"}, "v2"),
        ({"user-id": "user-48"}, "v2"),
        ({"user-id": "user-47"}, "v1"),
        ({"x-region": "shanghai"}, "v1"),
        ({}, "v1"),
    ],
)
async def test_istio_ab_manifest_routes_real_requests(
    ups: Upstreams, headers: dict, expected: str
) -> None:
    proxy = await serve(ups, "istio", ["istio-ab.yaml"], ["v1", "v2"])
    try:
        names = {(await ask(proxy, "/orders", "orders", headers=headers)).name for _ in range(20)}
        region = await ask(proxy, "/", "orders", headers={"x-region": "beijing"})
    finally:
        await proxy.close()
    assert names == {expected}
    assert region.headers.get("x-served-by") == "region-canary"


async def test_bookinfo_request_routing_everyone_to_v1(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", ["istio-bookinfo-v1.yaml"], BOOKINFO)
    try:
        got = {
            svc: (await ask(proxy, "/", svc)).name
            for svc in ("productpage", "reviews", "ratings", "details")
        }
        unknown = await ask(proxy, "/", "reviews.other")
    finally:
        await proxy.close()
    # four services, four v1 upstreams: never one service's v1 for another
    assert got == {s: f"{s}-v1" for s in ("productpage", "reviews", "ratings", "details")}
    assert unknown.status == 404


async def test_bookinfo_request_routing_jason_sees_reviews_v2(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", ["istio-bookinfo-jason.yaml"], ["v1", "v2"])
    try:
        jason = {
            (await ask(proxy, "/reviews/0", "reviews", headers={"end-user": "jason"})).name
            for _ in range(10)
        }
        others = {(await ask(proxy, "/reviews/0", "reviews", headers=h)).name
                  for h in ({}, {"end-user": "alice"}, {"end-user": "Jason"})}  # fmt: skip
    finally:
        await proxy.close()
    assert jason == {"v2"} and others == {"v1"}


async def test_bookinfo_traffic_shifting_50_50_then_v3(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", ["istio-bookinfo-50-50.yaml"], ["v1", "v3"])
    try:
        half = Counter([(await ask(proxy, "/", "reviews")).name for _ in range(200)])
    finally:
        await proxy.close()
    # Binomial(200, 0.5): mean 100, sd ~7; 60..140 is beyond 5 sigma
    assert half["v1"] + half["v3"] == 200 and 60 <= half["v3"] <= 140
    proxy = await serve(ups, "istio", ["istio-bookinfo-v3.yaml"], ["v3"])
    try:
        all_v3 = {(await ask(proxy, "/", "reviews")).name for _ in range(30)}
    finally:
        await proxy.close()
    assert all_v3 == {"v3"}


async def test_istio_rewrite_and_mirrors_reach_the_upstreams(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", ["istio-actions.yaml"], ["v1", "v2", "shadow"])
    try:
        api = await ask(proxy, "/api/v1/items?page=2", "shop.example.com")
        legacy = await ask(proxy, "/legacy/items", "shop.example.com")
        versions = await ask(proxy, "/v7/items", "shop.example.com")
        await ask(proxy, "/home", "shop.example.com")
        await asyncio.sleep(0.2)  # mirrors are fire-and-forget
    finally:
        await proxy.close()
    assert api.name == "v2" and api.body["path"] == "/api/v2/items?page=2"
    assert api.body["headers"]["host"] == "api.internal"
    assert legacy.body["path"] == "/api/v2/items"  # Envoy's literal prefix replacement
    assert versions.name == "v1" and versions.body["path"] == "/r/items/v7"
    assert any(r["path"] == "/home" for r in ups.started["v2"].requests)
    assert any(r["path"] == "/home" for r in ups.started["shadow"].requests)


async def test_istio_redirect_and_direct_response_answer(ups: Upstreams) -> None:
    """Needs the data plane's redirect and direct_response answers."""
    proxy = await serve(ups, "istio", ["istio-actions.yaml"], ["v1", "v2", "shadow"])
    try:
        moved = await ask(proxy, "/catalog/shoes?size=9", "shop.example.com")
        login = await ask(proxy, "/login", "shop.example.com")
        teapot = await ask(proxy, "/teapot", "shop.example.com")
    finally:
        await proxy.close()
    assert moved.status == 301
    assert moved.headers["Location"] == f"http://www.example.com:{proxy.port}/shop?size=9"
    assert (login.status, login.headers["Location"]) == (308, "https://shop.example.com/login")
    assert (teapot.status, teapot.body) == (418, "short and stout\n")


async def test_gateway_precedence_and_filters_with_real_traffic(ups: Upstreams) -> None:
    proxy = await serve(ups, "gateway", ["gateway-split.yaml"], ["foo-v1", "foo-v2"])
    host = "foo.example.com"
    try:
        health = await ask(proxy, "/api/health", host, headers={"traffic": "test"})
        canary = await ask(proxy, "/api/orders", host, headers={"traffic": "test"})
        api = await ask(proxy, "/api/orders", host)
    finally:
        await proxy.close()
    assert health.name == "foo-v1"  # Exact beats the header-matched prefix
    assert canary.name == "foo-v2" and canary.body["headers"].get("x-canary") == "true"
    assert api.name == "foo-v1" and api.headers.get("x-matched") == "api-prefix"


class Hooks:
    """A webhook receiver (Flagger's load tester stand-in) that records every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.calls.append(await request.json())
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _app_for(ups: Upstreams, tmp_path: pathlib.Path, text: str, names: list[str]) -> App:
    (tmp_path / "canary.yaml").write_text(text)
    doc, errors = translate("flagger", [str(tmp_path / "canary.yaml")], await ups.endpoints(names))
    assert errors == [] and doc is not None, errors
    (tmp_path / "config.yaml").write_text(local(doc))
    app = App(str(tmp_path / "config.yaml"), str(tmp_path / "state"))
    await app.start()
    return app


async def test_flagger_canary_runs_with_its_load_test_webhook(
    ups: Upstreams, tmp_path: pathlib.Path
) -> None:
    hooks = Hooks()
    await hooks.start()
    text = pathlib.Path(manifest("flagger-podinfo.yaml")).read_text()
    text = text.replace("http://flagger-loadtester.test/", f"http://127.0.0.1:{hooks.port}/")
    text = text.replace("interval: 1m\n    threshold", "interval: 1s\n    threshold")
    app = await _app_for(ups, tmp_path, text, ["primary", "canary"])
    try:
        async with aiohttp.ClientSession() as s:
            proxy = f"http://127.0.0.1:{app.proxy_port}/"
            before = {await _name(s, proxy) for _ in range(20)}
            admin = f"http://127.0.0.1:{app.admin_port}/api/v1/canaries/podinfo/start"
            async with s.post(admin) as r:
                assert r.status == 200, await r.text()
            seen = await _until_canary_traffic(s, proxy, hooks)
    finally:
        await app.stop()
        if hooks.runner:
            await hooks.runner.cleanup()
    assert before == {"primary"}
    assert "canary" in seen
    by_type = {c["type"]: c for c in hooks.calls}
    assert by_type["pre-rollout"]["metadata"]["type"] == "bash"
    assert by_type["rollout"]["metadata"]["cmd"].startswith("hey -z 1m")


async def _name(s: aiohttp.ClientSession, url: str, **kw) -> str:
    async with s.get(url, **kw) as r:
        return str((await r.json())["name"])


async def _until_canary_traffic(s: aiohttp.ClientSession, url: str, hooks: Hooks) -> set[str]:
    """Send traffic until the canary served some and an analysis ran the load test (<= 15 s)."""
    seen: set[str] = set()
    async with asyncio.timeout(15):
        while "canary" not in seen or all(c["type"] != "rollout" for c in hooks.calls):
            seen.add(await _name(s, url))
            await asyncio.sleep(0.01)
    return seen


async def test_flagger_nginx_ab_test_reaches_insiders_and_canary_cookies(
    ups: Upstreams, tmp_path: pathlib.Path
) -> None:
    """The tutorial's A/B test: `X-Canary: insider` or the cookie `canary=always` see the
    canary while the test runs; everyone else, and `canary=never`, stays on the primary."""
    text = pathlib.Path(manifest("flagger-nginx.yaml")).read_text()
    text = text.replace("interval: 10s", "interval: 1s").replace(
        "iterations: 10", "iterations: 1000"
    )
    text = text.replace(
        "      - name: latency\n        templateRef:", "      - name: x\n        templateRef:"
    )
    cut = text.index("      - name: x\n")
    text = text[:cut] + text[text.index("    webhooks:") :]
    text = text.replace("http://flagger-loadtester.test/", "http://127.0.0.1:9/")
    app = await _app_for(ups, tmp_path, text, ["primary", "canary"])
    host = {"Host": "app.example.com"}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
            proxy = f"http://127.0.0.1:{app.proxy_port}/"
            admin = f"http://127.0.0.1:{app.admin_port}/api/v1/canaries/podinfo/start"
            async with s.post(admin) as r:
                assert r.status == 200, await r.text()
            async with asyncio.timeout(10):
                while await _name(s, proxy, headers={**host, "X-Canary": "insider"}) != "canary":
                    await asyncio.sleep(0.05)
            insider = {
                await _name(s, proxy, headers={**host, "X-Canary": "insider"}) for _ in range(10)
            }
            cookie = {
                await _name(s, proxy, headers={**host, "Cookie": "canary=always"})
                for _ in range(10)
            }
            never = {
                await _name(s, proxy, headers={**host, "Cookie": "canary=never"}) for _ in range(10)
            }
            others = {await _name(s, proxy, headers=host) for _ in range(20)}
            async with s.get(proxy, headers={"Host": "other.example.com"}) as r:
                other_host = r.status
    finally:
        await app.stop()
    assert insider == {"canary"} and cookie == {"canary"}
    assert never == {"primary"} and others == {"primary"}
    assert other_host == 404
