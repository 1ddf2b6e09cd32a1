"""Admin API against a real App: auth, every endpoint, bad input changing nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from test_app_helpers import TOKEN_ENV, Admin, config_text, proxy_get, running_app, upstreams

TOKEN = "s3cret-token"


@pytest.fixture
async def admin(tmp_path, monkeypatch) -> AsyncIterator[Admin]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 90, 10))
        async with running_app(cfg, tmp_path / "state") as app:
            async with aiohttp.ClientSession() as s:
                a = Admin(s, app, TOKEN)
                a.app = app  # type: ignore[attr-defined]
                yield a


async def test_probes_and_metrics_need_no_token(admin: Admin) -> None:
    for path in ("/healthz", "/readyz"):
        status, _ = await admin.call("GET", path, token="")
        assert status == 200
    status, text = await admin.call("GET", "/metrics", token="")
    assert status == 200
    assert 'canaryproxy_route_weight{route="default",version="v2"} 10.0' in str(text)


@pytest.mark.parametrize("token", ["", "wrong", TOKEN + "x"])
async def test_everything_else_needs_the_token(admin: Admin, token: str) -> None:
    for method, path in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/series"),
        ("POST", "/api/v1/explain"),
        ("GET", "/api/v1/history"),
        ("POST", "/api/v1/reload"),
        ("POST", "/api/v1/undo"),
    ]:
        status, body = await admin.call(method, path, token=token)
        assert status == 401, path
        assert "token" in body["error"]  # type: ignore[index]
    status, _ = await admin.call(
        "PUT", "/api/v1/routes/default/weights", {"v1": 0, "v2": 1}, token=token
    )
    assert status == 401
    _, st = await admin.call("GET", "/api/v1/status")
    assert st["routes"][0]["weights"] == {"v1": 90.0, "v2": 10.0}  # type: ignore[index]


async def test_status_shows_routes_weights_upstreams(admin: Admin) -> None:
    status, st = await admin.call("GET", "/api/v1/status")
    assert status == 200
    assert isinstance(st, dict)
    assert st["revision"] == 1 and st["last_reload_error"] is None
    route = st["routes"][0]
    assert route["name"] == "default" and route["weights"] == {"v1": 90.0, "v2": 10.0}
    assert set(route["versions"]) == {"v1", "v2"}
    assert {u["name"] for u in st["upstreams"]} == {"v1", "v2"}


async def test_series_serve_the_samples_the_app_ticks_record(admin: Admin) -> None:
    app = admin.app  # type: ignore[attr-defined]
    started = time.time()
    await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v1"})
    for _ in range(30):
        assert await proxy_get(admin.s, app) == (200, "v1")
    await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
    for _ in range(10):
        assert await proxy_get(admin.s, app) == (200, "v2")
    # the app ticks once a second and samples every fifth tick
    deadline = time.monotonic() + 20
    while True:
        status, body = await admin.call("GET", "/api/v1/series")
        assert status == 200 and isinstance(body, dict)
        if any(s["points"] for s in body["series"]):
            break
        assert time.monotonic() < deadline, "no sample in the series"
        await asyncio.sleep(0.2)
    assert (body["interval_s"], body["window_s"]) == (5.0, 900.0)
    assert started <= body["now"] <= time.time() + 0.001  # rounded to the millisecond
    first = {s["version"]: s["points"][0] for s in body["series"] if s["route"] == "default"}
    assert set(first) == {"v1", "v2"}
    (t, rps1, err1, p99_1), (t2, rps2, err2, p99_2) = first["v1"], first["v2"]
    assert t == t2 and started <= t <= body["now"]
    assert rps2 > 0 and rps1 / rps2 == pytest.approx(3.0, rel=0.02)  # one window, 30 and 10
    assert err1 == err2 == 0.0
    assert p99_1 > 0 and p99_2 > 0


async def test_mutations_only_by_post_or_put(admin: Admin) -> None:
    for method, path in [
        ("GET", "/api/v1/reload"),
        ("GET", "/api/v1/undo"),
        ("POST", "/api/v1/routes/default/weights"),
        ("GET", "/api/v1/routes/default/switch"),
        ("DELETE", "/api/v1/status"),
    ]:
        status, body = await admin.call(method, path)
        assert status == 405, (method, path)
        assert "error" in body  # type: ignore[operator]


async def test_weights_move_traffic_and_record_a_revision(admin: Admin) -> None:
    status, ans = await admin.call("PUT", "/api/v1/routes/default/weights", {"v2": 100})
    assert status == 200
    assert ans == {"revision": 2, "route": "default", "weights": {"v1": 0.0, "v2": 100.0}}
    for _ in range(5):
        assert await proxy_get(admin.s, admin.app) == (200, "v2")  # type: ignore[attr-defined]
    _, hist = await admin.call("GET", "/api/v1/history")
    assert [r["cause"] for r in hist["revisions"]] == ["reload", "weights"]  # type: ignore[index]


BAD_WEIGHTS = [
    ("/api/v1/routes/default/weights", b'{"v3": 1}', "no subset"),
    ("/api/v1/routes/default/weights", b'{"v1": -1, "v2": 5}', ">= 0"),
    ("/api/v1/routes/default/weights", b'{"v1": NaN, "v2": 5}', "finite"),
    ("/api/v1/routes/default/weights", b'{"v1": Infinity}', "finite"),
    ("/api/v1/routes/default/weights", b'{"v1": "90"}', "number"),
    ("/api/v1/routes/default/weights", b'{"v1": true}', "number"),
    ("/api/v1/routes/default/weights", b'{"v1": 0, "v2": 0}', "not all be 0"),
    ("/api/v1/routes/default/weights", b'{"v1\\r\\nX-Evil: 1": 1}', "CR, LF"),
    ("/api/v1/routes/default/weights", b"v1=90", "not valid JSON"),
    ("/api/v1/routes/default/weights", b"", "JSON object"),
    ("/api/v1/routes/default/weights", b"[1, 2]", "JSON object"),
    ("/api/v1/routes/default/weights", b'{"v1": 1, "pad": "' + b"x" * (1 << 20) + b'"}', "over"),
    ("/api/v1/routes/de%0d%0afault/weights", b'{"v1": 1}', "CR, LF"),
]


@pytest.mark.parametrize("path,raw,why", BAD_WEIGHTS, ids=[w for _, _, w in BAD_WEIGHTS])
async def test_bad_weights_are_400_and_change_nothing(
    admin: Admin, path: str, raw: bytes, why: str
) -> None:
    status, ans = await admin.call("PUT", path, raw=raw)
    assert status == 400
    assert why in ans["error"]  # type: ignore[index]
    _, st = await admin.call("GET", "/api/v1/status")
    assert st["revision"] == 1  # type: ignore[index]
    assert st["routes"][0]["weights"] == {"v1": 90.0, "v2": 10.0}  # type: ignore[index]


async def test_switch_moves_everything_and_back(admin: Admin) -> None:
    status, ans = await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
    assert status == 200 and ans["weights"] == {"v1": 0.0, "v2": 100.0}  # type: ignore[index]
    _, st = await admin.call("GET", "/api/v1/status")
    assert st["routes"][0]["live"] == ["v2"] and st["routes"][0]["idle"] == ["v1"]  # type: ignore[index]
    status, ans = await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v1"})
    assert ans["weights"] == {"v1": 100.0, "v2": 0.0}  # type: ignore[index]
    for body in ({"to": "v9"}, {"to": ""}, {"subset": "v2"}, {"to": "v2\n"}):
        status, _ = await admin.call("POST", "/api/v1/routes/default/switch", body)
        assert status == 400, body
    _, hist = await admin.call("GET", "/api/v1/history")
    assert len(hist["revisions"]) == 3  # type: ignore[index]


async def test_preview_header_reaches_the_idle_color(admin: Admin) -> None:
    await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v1"})
    app = admin.app  # type: ignore[attr-defined]
    assert await proxy_get(admin.s, app) == (200, "v1")
    assert await proxy_get(admin.s, app, headers={"x-canary-preview": "1"}) == (200, "v2")


async def test_undo_restores_the_previous_revision(admin: Admin) -> None:
    await admin.call("PUT", "/api/v1/routes/default/weights", {"v1": 50, "v2": 50})
    await admin.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
    status, ans = await admin.call("POST", "/api/v1/undo")
    assert status == 200 and ans["restored"] == 2  # type: ignore[index]
    assert ans["weights"]["default"] == {"v1": 50.0, "v2": 50.0}  # type: ignore[index]
    status, ans = await admin.call("POST", "/api/v1/undo", {"to_revision": 1})
    assert ans["weights"]["default"] == {"v1": 90.0, "v2": 10.0}  # type: ignore[index]
    for body in ({"to_revision": 99}, {"to_revision": 0}, {"to_revision": "1"}, {"x": 1}):
        status, _ = await admin.call("POST", "/api/v1/undo", body)
        assert status == 400, body
    _, hist = await admin.call("GET", "/api/v1/history")
    assert [r["cause"] for r in hist["revisions"]][-2:] == ["undo", "undo"]  # type: ignore[index]


async def test_explain_names_the_route(admin: Admin) -> None:
    status, ans = await admin.call(
        "POST", "/api/v1/explain", {"method": "GET", "path": "/x", "headers": {"User-Id": "u1"}}
    )
    assert status == 200
    assert "default" in str(ans)
    status, _ = await admin.call("POST", "/api/v1/explain", {"path": 3})
    assert status == 400


async def test_unknown_canary_and_action_are_404(admin: Admin) -> None:
    status, _ = await admin.call("POST", "/api/v1/canaries/nope/promote")
    assert status == 404
    status, _ = await admin.call("POST", "/api/v1/canaries/nope/explode")
    assert status == 404


async def test_dashboard_page_loads_without_the_token(admin: Admin) -> None:
    async with admin.s.get(admin.base + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "canaryproxy" in (await r.text()).lower()


async def test_one_audit_line_per_mutation(admin: Admin, caplog) -> None:
    caplog.set_level(logging.INFO, logger="canaryproxy.audit")
    await admin.call("PUT", "/api/v1/routes/default/weights", {"v1": 1, "v2": 1})
    await admin.call("PUT", "/api/v1/routes/default/weights", {"v1": -1})
    await admin.call("POST", "/api/v1/undo", token="bad")
    await admin.call("GET", "/api/v1/status")
    lines = [r.getMessage() for r in caplog.records if r.name == "canaryproxy.audit"]
    assert len(lines) == 3
    assert "peer=127.0.0.1" in lines[0] and "status=200 result=ok" in lines[0]
    assert "/api/v1/routes/default/weights" in lines[0] and 'body={"v1":1,"v2":1}' in lines[0]
    assert "status=400 result=refused" in lines[1]
    assert "status=401 result=unauthorized" in lines[2]


CANARY = """canaries:
  - name: default
    route: default
    stable: v1
    canary: v2
    analysis: {interval: 1s, step_weight: 20, max_weight: 60, min_requests: 1}
"""


async def test_canary_verbs_drive_the_controller(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0, extra=CANARY))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            if app.canaries is None:
                pytest.skip("canary controller not installed")
            a = Admin(s, app)
            status, ans = await a.call("POST", "/api/v1/canaries/default/pause")
            assert status == 400 and "Idle" in ans["error"]  # type: ignore[index]
            assert app.store.head() == 1  # a canary that changes nothing records nothing
            status, _ = await a.call("POST", "/api/v1/canaries/default/start")
            assert status == 200
            status, _ = await a.call("POST", "/api/v1/canaries/default/promote")
            assert status == 200
            for _ in range(100):
                if app.table.weights()["default"] == {"v1": 0.0, "v2": 100.0}:
                    break
                await asyncio.sleep(0.02)
            _, st = await a.call("GET", "/api/v1/status")
            assert st["canaries"][0]["phase"] == "Succeeded"  # type: ignore[index]
            causes = [r["cause"] for r in app.control.history()]
            assert all(c.startswith("canary:default") for c in causes[1:])
            assert await proxy_get(s, app) == (200, "v2")


async def test_cross_origin_mutation_is_403_and_changes_nothing(admin: Admin) -> None:
    url = admin.base + "/api/v1/routes/default/switch"
    headers = {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}
    async with admin.s.post(url, json={"to": "v2"}, headers=headers) as r:
        assert r.status == 403
    headers["Origin"] = admin.base
    async with admin.s.post(url, json={"to": "v2"}, headers=headers) as r:
        assert r.status == 200


async def test_without_token_only_ip_or_localhost_hosts(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{app.admin_port}/api/v1/status"
            async with s.get(base) as r:
                assert r.status == 200  # no token configured: loopback is open
            async with s.get(base, headers={"Host": f"rebind.example:{app.admin_port}"}) as r:
                assert r.status == 403
            async with s.get(base, headers={"Host": f"localhost:{app.admin_port}"}) as r:
                assert r.status == 200
