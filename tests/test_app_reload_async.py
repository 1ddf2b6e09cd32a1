"""Reloads that keep serving: stepwise table builds, serialised reloads, no lost weight change."""

from __future__ import annotations

import asyncio

import aiohttp
from test_app_helpers import config_text, proxy_get, running_app, upstreams, write

from proxy.config.schema import Config, Destination, MatchRule, Route, StringMatch, Upstream
from proxy.control import build_table_stepwise
from proxy.routing.table import BuildCache, Overrides, build_table


def tenant_routes(n: int, tag: str = "") -> str:
    """YAML for n regex header routes placed ahead of `default`."""
    return "".join(
        f"  - name: t{i}\n"
        f"    match: [{{headers: {{x-tenant: {{regex: '^t{i}{tag}(-[a-z]+)?$'}}}}}}]\n"
        f"    route: [{{destination: v2}}]\n"
        for i in range(n)
    )


def with_tenants(p1: int, p2: int, n: int, tag: str = "", w1: float = 100, w2: float = 0) -> str:
    return config_text(p1, p2, w1, w2).replace("routes:\n", "routes:\n" + tenant_routes(n, tag))


async def test_stepwise_build_lets_other_tasks_run_between_routes() -> None:
    ups = (Upstream("v1", ("127.0.0.1:1",)),)
    rule = MatchRule(headers=(("x-t", StringMatch("regex", "^a+$")),))
    routes = tuple(Route(f"r{i}", (Destination("v1", 1),), match=(rule,)) for i in range(50))
    config = Config(listen="127.0.0.1:0", upstreams=ups, routes=routes)
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    table = await build_table_stepwise(config, Overrides(), BuildCache(), slice_s=0.0)
    done = True
    await task
    assert ticks - start >= len(routes) - 1  # the loop ran between (nearly) every route
    assert [r.name for r in table.routes] == [r.name for r in build_table(config).routes]


async def test_weight_change_during_a_reload_is_kept(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(with_tenants(p1, p2, 200))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            write(cfg, with_tenants(p1, p2, 200, tag="x"))
            reload = asyncio.create_task(app.reload_async())
            await asyncio.sleep(0)  # the reload is now parsing the file off the loop
            assert not reload.done()
            await app.control.set_weights("default", {"v1": 0, "v2": 100})
            assert (await reload)["result"] == "ok"
            assert app.table is not None
            assert app.table.weights()["default"] == {"v1": 0.0, "v2": 100.0}
            assert await proxy_get(s, app) == (200, "v2")
            assert await proxy_get(s, app, headers={"x-tenant": "t7x"}) == (200, "v2")
            assert [r["cause"] for r in app.control.history()][-2:] == ["weights", "reload"]


async def test_concurrent_reloads_apply_the_file_once(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(with_tenants(p1, p2, 50))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            head = len(app.control.history())
            write(cfg, with_tenants(p1, p2, 50, w1=0, w2=100))
            results = await asyncio.gather(app.reload_async(), app.reload_async())
            assert sorted(r["result"] for r in results) == ["ok", "unchanged"]
            assert len(app.control.history()) == head + 1
            assert await proxy_get(s, app) == (200, "v2")


async def test_bad_file_by_async_reload_changes_nothing(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(with_tenants(p1, p2, 20))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            before = app.table
            write(cfg, with_tenants(p1, p2, 20, tag="(") + "\n")  # an unbalanced regex
            out = await app.reload_async()
            assert out["result"] == "rejected" and "regex" in out["error"]
            assert app.table is before
            assert await proxy_get(s, app, headers={"x-tenant": "t3"}) == (200, "v2")


async def test_status_counts_tasks(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2))
        async with running_app(cfg, tmp_path / "s") as app:
            tasks = app.control.status()["tasks"]
            assert isinstance(tasks, int) and tasks >= 1
