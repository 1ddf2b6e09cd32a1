"""Hot reload: by API, by file watch; bad files rejected whole while traffic goes on."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import generate_latest
from test_app_helpers import (
    Admin,
    bounded_load,
    config_text,
    failures,
    proxy_get,
    running_app,
    start_upstream,
    upstreams,
    write,
)

EXTRA = "metrics: {compat: [http]}\n"


def _reloads(app, result: str) -> float:
    text = generate_latest(app.registry).decode()
    line = f'canaryproxy_config_reloads_total{{result="{result}"}} '
    return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])


async def test_reload_by_api_applies_new_weights(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            assert await proxy_get(s, app) == (200, "v1")
            write(cfg, config_text(p1, p2, 0, 100))
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert (status, ans) == (200, {"result": "ok", "revision": 2})
            assert await proxy_get(s, app) == (200, "v2")
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert ans == {"result": "unchanged", "revision": 2}
            assert _reloads(app, "ok") == 1


async def test_bad_file_is_rejected_whole_and_traffic_is_untouched(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            # one good change and one bad key in the same file: nothing applies
            write(cfg, config_text(p1, p2, 0, 100).replace("access_log", "acces_log"))
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert status == 400 and ans["result"] == "rejected"  # type: ignore[index]
            assert "acces_log" in ans["error"]  # type: ignore[index]
            assert await proxy_get(s, app) == (200, "v1")
            _, st = await admin.call("GET", "/api/v1/status")
            assert "acces_log" in st["last_reload_error"]  # type: ignore[index]
            assert st["revision"] == 1  # type: ignore[index]
            assert _reloads(app, "rejected") == 1
            write(cfg, config_text(p1, p2, 0, 100))
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert ans["result"] == "ok"  # type: ignore[index]
            _, st = await admin.call("GET", "/api/v1/status")
            assert st["last_reload_error"] is None  # type: ignore[index]
            assert await proxy_get(s, app) == (200, "v2")


async def test_file_watch_reloads_without_being_asked(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s", watch=0.05) as app:
            write(cfg, config_text(p1, p2, 0, 100))
            for _ in range(200):
                if app.store.head() == 2:
                    break
                await asyncio.sleep(0.05)
            assert app.store.history()[-1]["cause"] == "reload"
            assert app.table.weights()["default"] == {"v1": 0.0, "v2": 100.0}


async def test_api_weights_stay_until_the_file_changes_them(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            await admin.call("PUT", "/api/v1/routes/default/weights", {"v1": 0, "v2": 1})
            # an unrelated edit keeps the override
            write(cfg, config_text(p1, p2, 100, 0, extra=EXTRA))
            _, ans = await admin.call("POST", "/api/v1/reload")
            assert ans["result"] == "ok"  # type: ignore[index]
            assert await proxy_get(s, app) == (200, "v2")
            # the file's own weights change: the file wins
            write(cfg, config_text(p1, p2, 100, 1, extra=EXTRA))
            await admin.call("POST", "/api/v1/reload")
            assert app.table.weights()["default"] == {"v1": 100.0, "v2": 1.0}


@pytest.mark.slow
async def test_100_reloads_under_load_fail_no_request(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 50, 50))
        async with running_app(cfg, tmp_path / "s") as app:
            stop = asyncio.Event()
            load = asyncio.create_task(bounded_load(app, stop))
            for i in range(100):
                write(cfg, config_text(p1, p2, 51 + i, 50))
                assert app.reload()["result"] == "ok"
                await asyncio.sleep(0.02)
            stop.set()
            seen = await load
            assert app.store.head() == 101
            print(f"100 reloads under load: {dict(seen)}")
            assert failures(seen) == 0
            assert seen["v1"] > 50 and seen["v2"] > 20


async def test_removed_subset_finishes_its_in_flight_request(tmp_path) -> None:
    r1, p1 = await start_upstream("v1")
    r2, p2 = await start_upstream("v2", delay=0.5)
    only_v1 = f"""\
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0}}
access_log: false
upstreams:
  v1: {{endpoints: ["127.0.0.1:{p1}"]}}
routes:
  - name: default
    route: [{{destination: v1}}]
"""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_text(p1, p2, 0, 100))
    try:
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            slow = asyncio.create_task(proxy_get(s, app, "/slow"))
            await asyncio.sleep(0.2)  # the request is with v2 now
            write(cfg, only_v1)
            _, ans = await admin.call("POST", "/api/v1/reload")
            assert ans["result"] == "ok"  # type: ignore[index]
            assert await proxy_get(s, app) == (200, "v1")
            assert await asyncio.wait_for(slow, 5) == (200, "v2")
            status, ans = await admin.call("POST", "/api/v1/undo", {"to_revision": 1})
            assert status == 400 and "gone" in ans["error"]  # type: ignore[index]
    finally:
        await r1.cleanup()
        await r2.cleanup()
