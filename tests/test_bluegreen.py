"""Blue-green: switch moves all traffic at once, without a failed request; switch back
is the rollback; status says which color is live and which idle (previewable)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from test_app_helpers import (
    Admin,
    bounded_load,
    config_text,
    failures,
    proxy_get,
    running_app,
    upstreams,
)


async def test_status_names_live_and_idle_colors(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            _, st = await admin.call("GET", "/api/v1/status")
            route = st["routes"][0]  # type: ignore[index]
            assert (route["live"], route["idle"]) == (["v1"], ["v2"])
            assert route["preview"] == {"header": "x-canary-preview", "value": "1"}
            await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
            _, st = await admin.call("GET", "/api/v1/status")
            route = st["routes"][0]  # type: ignore[index]
            assert (route["live"], route["idle"]) == (["v2"], ["v1"])
            # after the switch the old color is the previewable one
            assert await proxy_get(s, app, headers={"x-canary-preview": "1"}) == (200, "v1")
            assert await proxy_get(s, app) == (200, "v2")


@pytest.mark.slow
async def test_switching_under_load_fails_no_request(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            stop = asyncio.Event()
            load = asyncio.create_task(bounded_load(app, stop, workers=8))
            for i in range(20):
                color = "v2" if i % 2 == 0 else "v1"
                status, _ = await admin.call("POST", "/api/v1/routes/default/switch", {"to": color})
                assert status == 200
                await asyncio.sleep(0.1)
                # once the switch answered, every new request goes to the new color
                for _ in range(5):
                    assert await proxy_get(s, app) == (200, color)
            stop.set()
            seen = await load
            print(f"20 blue-green switches under load: {dict(seen)}")
            assert failures(seen) == 0
            assert seen["v1"] > 0 and seen["v2"] > 0
