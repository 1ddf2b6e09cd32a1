"""`weights ROUTE v2=10` means "v2 gets 10 %": the rule, the API and the CLI."""

from __future__ import annotations

import asyncio
from argparse import Namespace
from collections.abc import AsyncIterator

import aiohttp
import pytest
from test_app_helpers import Admin, config_text, running_app, upstreams

from proxy import client
from proxy.app import App
from proxy.routing.split import weights_from_percent

RULE = [
    # (current weights, given, result)
    ({"v1": 95, "v2": 5}, {"v2": 10}, {"v1": 90, "v2": 10}),
    ({"v1": 95, "v2": 5}, {"v1": 50}, {"v1": 50, "v2": 50}),
    ({"v1": 100, "v2": 0}, {"v2": 100}, {"v1": 0, "v2": 100}),
    ({"v1": 100, "v2": 0}, {"v2": 0}, {"v1": 100, "v2": 0}),
    ({"v1": 0, "v2": 100}, {"v2": 10}, {"v1": 90, "v2": 10}),  # left-out at 0: shares anyway
    ({"v1": 60, "v2": 30, "v3": 10}, {"v3": 50}, {"v1": 33.333333, "v2": 16.666667, "v3": 50}),
    ({"v1": 0, "v2": 0, "v3": 100}, {"v3": 40}, {"v1": 30, "v2": 30, "v3": 40}),
    ({"v1": 95, "v2": 5}, {"v1": 3, "v2": 1}, {"v1": 3, "v2": 1}),  # all named: relative
    ({"v1": 95, "v2": 5}, {"v1": 300, "v2": 100}, {"v1": 300, "v2": 100}),
    ({"v1": 95, "v2": 5}, {"v2": 100}, {"v1": 0, "v2": 100}),
]


@pytest.mark.parametrize("current,given,want", RULE)
def test_names_left_out_share_what_is_left(current, given, want) -> None:
    got = weights_from_percent(current, given)
    assert got == pytest.approx(want)
    assert list(got) == list(current)  # the route's destination order stays


@pytest.mark.parametrize(
    "given,why",
    [
        ({"v2": 120}, "over 100 %"),
        ({"v2": 60, "v3": 50}, "over 100 %"),
        ({"v9": 10}, "has no subset v9"),
    ],
)
def test_refusals_say_why(given, why) -> None:
    with pytest.raises(ValueError, match=why):
        weights_from_percent({"v1": 50, "v2": 40, "v3": 10}, given)


@pytest.fixture
async def app(tmp_path) -> AsyncIterator[App]:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 95, 5))
        async with running_app(cfg, tmp_path / "s") as a:
            yield a


async def test_api_put_one_name_is_a_percentage(app: App) -> None:
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, app)
        status, ans = await admin.call("PUT", "/api/v1/routes/default/weights", {"v1": 50})
        assert status == 200 and ans["weights"] == {"v1": 50.0, "v2": 50.0}  # type: ignore[index]
        status, ans = await admin.call("PUT", "/api/v1/routes/default/weights", {"v2": 10})
        assert ans["weights"] == {"v1": 90.0, "v2": 10.0}  # type: ignore[index]
        assert app.table is not None and app.table.weights()["default"] == {"v1": 90, "v2": 10}


async def test_api_over_100_with_a_name_left_out_is_400_and_changes_nothing(app: App) -> None:
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, app)
        status, ans = await admin.call("PUT", "/api/v1/routes/default/weights", {"v2": 150})
        assert status == 400 and "over 100 %" in ans["error"]  # type: ignore[index]
        _, st = await admin.call("GET", "/api/v1/status")
        assert st["revision"] == 1  # type: ignore[index]
        assert st["routes"][0]["weights"] == {"v1": 95.0, "v2": 5.0}  # type: ignore[index]


async def test_unknown_route_is_404_like_an_unknown_canary(app: App) -> None:
    async with aiohttp.ClientSession() as s:
        admin = Admin(s, app)
        for method, path, body in [
            ("PUT", "/api/v1/routes/nope/weights", {"v1": 10}),
            ("POST", "/api/v1/routes/nope/switch", {"to": "v1"}),
            ("POST", "/api/v1/canaries/nope/start", {}),
        ]:
            status, ans = await admin.call(method, path, body)
            assert status == 404, path
            assert "nope" in ans["error"]  # type: ignore[index]


async def test_cli_weights_one_name(app: App, capsys) -> None:
    url = f"http://127.0.0.1:{app.admin_port}"
    args = Namespace(admin=url, route="default", pairs=["v2=10"])
    assert await asyncio.to_thread(client.cmd_weights, args) == 0
    assert "v1=90 v2=10" in capsys.readouterr().out
    args = Namespace(admin=url, route="default", pairs=["v2=101"])
    assert await asyncio.to_thread(client.cmd_weights, args) == 1
    assert "over 100 %" in capsys.readouterr().err
