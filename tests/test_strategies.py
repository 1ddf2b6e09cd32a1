"""Each release strategy of config/ served by the real proxy to real upstreams.

The shipped example files are loaded as they are; only the endpoint addresses and the listen
port are replaced by the ones the test started, so a user can trust the examples verbatim.
"""

from __future__ import annotations

import pathlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.util_servers import ProxyHandle, Upstream, config_from_yaml, start_proxy, start_upstream

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "config"
PORTS = ("127.0.0.1:9001", "127.0.0.1:9002")


def named(version: str) -> Callable[[web.Request], web.StreamResponse]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=version, headers={"x-version": version})

    return handler  # type: ignore[return-value]


async def serve(name: str, versions: tuple[str, str]) -> tuple[ProxyHandle, list[Upstream]]:
    ups = [await start_upstream(named(v)) for v in versions]
    text = (CONFIG_DIR / name).read_text()
    for placeholder, up in zip(PORTS, ups, strict=True):
        text = text.replace(placeholder, up.address)
    text = text.replace("127.0.0.1:8080", "127.0.0.1:0").replace("0.0.0.0:8080", "127.0.0.1:0")
    config = config_from_yaml(text)
    return await start_proxy(config), ups


async def versions_seen(
    session: aiohttp.ClientSession, url: str, n: int, headers_for: Callable[[int], dict[str, str]]
) -> Counter[str]:
    seen: Counter[str] = Counter()
    for i in range(n):
        async with session.get(url, headers=headers_for(i)) as r:
            assert r.status == 200
            seen[await r.text()] += 1
    return seen


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s


async def close(proxy: ProxyHandle, ups: list[Upstream]) -> None:
    await proxy.close()
    for up in ups:
        await up.close()


async def test_gray_release_95_5_split(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("example.yaml", ("v1", "v2"))
    try:
        random.seed(7)
        seen = await versions_seen(session, proxy.url + "/", 1000, lambda i: {})
        assert seen["v1"] + seen["v2"] == 1000
        assert 25 <= seen["v2"] <= 80, seen  # 5 % of 1000, well inside random spread
    finally:
        await close(proxy, ups)


async def test_ab_by_user_id_even_and_odd_digits(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("ab-header.yaml", ("version-a", "version-b"))
    try:
        even = await versions_seen(
            session, proxy.url + "/", 20, lambda i: {"user-id": f"user-{2 * i}"}
        )
        odd = await versions_seen(
            session, proxy.url + "/", 20, lambda i: {"user-id": f"user-{2 * i + 1}"}
        )
        assert even == Counter({"version-a": 20})
        assert odd == Counter({"version-b": 20})
    finally:
        await close(proxy, ups)


async def test_cookie_gray_with_sticky_cookie(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("cookie-sticky.yaml", ("v1", "v2"))
    try:
        async with session.get(proxy.url + "/", headers={"cookie": "beta_tester=true"}) as r:
            assert await r.text() == "v2"
        pinned: Counter[str] = Counter()
        for _ in range(200):
            async with session.get(proxy.url + "/") as r:
                version = await r.text()
                cookie = r.headers.get("set-cookie", "")
            assert cookie.startswith(f"version={version};"), cookie
            assert "HttpOnly" in cookie and "Max-Age=86400" in cookie
            # the client keeps the cookie: every later request goes to the same version
            for _ in range(3):
                async with session.get(
                    proxy.url + "/", headers={"cookie": f"version={version}"}
                ) as again:
                    assert await again.text() == version
                    assert "set-cookie" not in again.headers
            pinned[version] += 1
        assert pinned["v1"] > pinned["v2"] > 0, pinned  # new users still split 90/10
    finally:
        await close(proxy, ups)


async def test_user_allow_list_reaches_the_new_version(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("whitelist.yaml", ("v1", "v2"))
    try:
        testers = await versions_seen(
            session, proxy.url + "/", 10, lambda i: {"user-id": "test-user-002"}
        )
        others = await versions_seen(
            session, proxy.url + "/", 30, lambda i: {"user-id": f"customer-{i}"}
        )
        assert testers == Counter({"v2": 10})
        assert others == Counter({"v1": 30})
    finally:
        await close(proxy, ups)


async def test_region_header_routes_one_region(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("region.yaml", ("v1", "v2"))
    try:
        beijing = await versions_seen(
            session, proxy.url + "/", 10, lambda i: {"x-region": "beijing"}
        )
        shanghai = await versions_seen(
            session, proxy.url + "/", 10, lambda i: {"x-region": "shanghai"}
        )
        assert beijing == Counter({"v2": 10})
        assert shanghai == Counter({"v1": 10})
    finally:
        await close(proxy, ups)


async def test_blue_green_preview_reaches_the_idle_color(session: aiohttp.ClientSession) -> None:
    proxy, ups = await serve("blue-green.yaml", ("blue", "green"))
    try:
        live = await versions_seen(session, proxy.url + "/", 20, lambda i: {})
        preview = await versions_seen(
            session, proxy.url + "/", 5, lambda i: {"x-canary-preview": "1"}
        )
        assert live == Counter({"blue": 20})
        assert preview == Counter({"green": 5})
    finally:
        await close(proxy, ups)
