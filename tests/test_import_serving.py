"""Imported manifests served by the real proxy: real aiohttp upstreams, real HTTP traffic."""

from __future__ import annotations

import asyncio
import pathlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_import_common import manifest
from util_servers import Upstream, config_from_yaml, start_proxy, start_upstream

from proxy.app import App
from proxy.importers import translate
from proxy.importers.common import dump_config


async def named(name: str) -> Upstream:
    """An upstream answering with its own name and echoing the headers it got."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "headers": dict(request.headers)})

    return await start_upstream(handler, name)


class Upstreams:
    """Named upstreams started on demand, all closed by the fixture."""

    def __init__(self) -> None:
        self.started: dict[str, Upstream] = {}

    async def get(self, name: str) -> Upstream:
        if name not in self.started:
            self.started[name] = await named(name)
        return self.started[name]


@pytest.fixture
async def ups() -> AsyncIterator[Upstreams]:
    holder = Upstreams()
    yield holder
    for up in holder.started.values():
        await up.close()


def serve_text(kind: str, files: list[str], endpoints: dict[str, Upstream]) -> str:
    eps = ",".join(f"{k}={u.address}" for k, u in endpoints.items())
    doc, errors = translate(kind, files, eps)
    assert errors == [] and doc is not None
    doc.update({"listen": "127.0.0.1:0", "access_log": False, "admin": {"listen": "127.0.0.1:0"}})
    return dump_config(doc)


async def get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict, Any]:
    async with session.get(url, **kw) as r:
        return r.status, dict(r.headers), await r.json()


async def test_istio_weight_split_serves_both_versions(ups: Upstreams) -> None:
    eps = {"v1": await ups.get("v1"), "v2": await ups.get("v2")}
    proxy = await start_proxy(
        config_from_yaml(serve_text("istio", [manifest("istio-weights.yaml")], eps))
    )
    try:
        async with aiohttp.ClientSession() as s:
            seen = Counter([(await get(s, proxy.url + "/"))[2]["name"] for _ in range(200)])
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
    eps = {"v1": await ups.get("v1"), "v2": await ups.get("v2")}
    proxy = await start_proxy(
        config_from_yaml(serve_text("istio", [manifest("istio-ab.yaml")], eps))
    )
    try:
        async with aiohttp.ClientSession() as s:
            names = {
                (await get(s, proxy.url + "/orders", headers=headers))[2]["name"] for _ in range(20)
            }
            _, resp_headers, _ = await get(s, proxy.url + "/", headers={"x-region": "beijing"})
    finally:
        await proxy.close()
    assert names == {expected}
    assert resp_headers.get("x-served-by") == "region-canary"


async def test_gateway_precedence_and_filters_with_real_traffic(ups: Upstreams) -> None:
    eps = {"foo-v1": await ups.get("foo-v1"), "foo-v2": await ups.get("foo-v2")}
    proxy = await start_proxy(
        config_from_yaml(serve_text("gateway", [manifest("gateway-split.yaml")], eps))
    )
    try:
        async with aiohttp.ClientSession() as s:
            _, _, health = await get(s, proxy.url + "/api/health", headers={"traffic": "test"})
            _, _, canary = await get(s, proxy.url + "/api/orders", headers={"traffic": "test"})
            _, api_headers, api = await get(s, proxy.url + "/api/orders")
    finally:
        await proxy.close()
    assert health["name"] == "foo-v1"  # Exact beats the header-matched prefix
    assert canary["name"] == "foo-v2" and canary["headers"].get("x-canary") == "true"
    assert api["name"] == "foo-v1" and api_headers.get("x-matched") == "api-prefix"


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


async def test_flagger_canary_runs_with_its_load_test_webhook(
    ups: Upstreams, tmp_path: pathlib.Path
) -> None:
    hooks = Hooks()
    await hooks.start()
    text = pathlib.Path(manifest("flagger-podinfo.yaml")).read_text()
    text = text.replace("http://flagger-loadtester.test/", f"http://127.0.0.1:{hooks.port}/")
    text = text.replace("interval: 1m\n    threshold", "interval: 1s\n    threshold")
    (tmp_path / "canary.yaml").write_text(text)
    eps = {"primary": await ups.get("primary"), "canary": await ups.get("canary")}
    (tmp_path / "config.yaml").write_text(
        serve_text("flagger", [str(tmp_path / "canary.yaml")], eps)
    )
    app = App(str(tmp_path / "config.yaml"), str(tmp_path / "state"))
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            proxy = f"http://127.0.0.1:{app.proxy_port}/"
            before = {(await get(s, proxy))[2]["name"] for _ in range(20)}
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


async def _until_canary_traffic(s: aiohttp.ClientSession, url: str, hooks: Hooks) -> set[str]:
    """Send traffic until the canary served some and an analysis ran the load test (<= 15 s)."""
    seen: set[str] = set()
    async with asyncio.timeout(15):
        while "canary" not in seen or all(c["type"] != "rollout" for c in hooks.calls):
            seen.add((await get(s, url))[2]["name"])
            await asyncio.sleep(0.01)
    return seen
