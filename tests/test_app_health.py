"""Active health checks: thresholds (pure) and their effect on a running App."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from test_app_helpers import Admin, config_text, running_app, start_upstream

from proxy.config.schema import HealthCheck
from proxy.dataplane.health import next_health

CHECK = HealthCheck(healthy=2, unhealthy=3)


@pytest.mark.parametrize(
    "healthy,passes,fails,ok,expected",
    [
        (True, 0, 0, False, (True, 0, 1)),
        (True, 0, 2, False, (False, 0, 3)),  # third failure in a row
        (True, 0, 2, True, (True, 1, 0)),  # a pass resets the failures
        (False, 0, 3, True, (False, 1, 0)),
        (False, 1, 0, True, (True, 2, 0)),  # second pass in a row
        (False, 1, 0, False, (False, 0, 1)),
    ],
)
def test_thresholds(healthy: bool, passes: int, fails: int, ok: bool, expected: tuple) -> None:
    assert next_health(healthy, passes, fails, ok, CHECK) == expected


async def _health_upstream(state: dict) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.Response(status=200 if state["ok"] else 503)
        return web.Response(text="v2")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def _v2_healthy(admin: Admin) -> bool:
    _, st = await admin.call("GET", "/api/v1/status")
    ups = {u["name"]: u for u in st["upstreams"]}  # type: ignore[index]
    return bool(ups["v2"]["endpoints"][0]["healthy"])


async def _until(admin: Admin, want: bool) -> None:
    for _ in range(100):
        if await _v2_healthy(admin) == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"v2 never became healthy={want}")


async def test_failing_endpoint_goes_unhealthy_and_back(tmp_path) -> None:
    state = {"ok": False}
    r1, p1 = await start_upstream("v1")
    r2, p2 = await _health_upstream(state)
    check = "health_check: {path: /health, interval: 50ms, timeout: 1s, unhealthy: 2, healthy: 1}"
    text = config_text(p1, p2, 100, 0).replace(
        f'v2: {{endpoints: ["127.0.0.1:{p2}"]}}', f'v2: {{endpoints: ["127.0.0.1:{p2}"], {check}}}'
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    try:
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            await _until(admin, False)
            # v2 takes no traffic yet: still ready
            assert (await admin.call("GET", "/readyz"))[0] == 200
            await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
            status, ans = await admin.call("GET", "/readyz")
            assert status == 503 and "v2" in ans["reason"]  # type: ignore[index]
            state["ok"] = True
            await _until(admin, True)
            assert (await admin.call("GET", "/readyz"))[0] == 200
    finally:
        await r1.cleanup()
        await r2.cleanup()
