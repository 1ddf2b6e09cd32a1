"""A/B goals counted by the data plane: real upstreams, the real proxy, real HTTP."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_canary_functional import INTERVAL, Rig

ANALYSIS = f"""
      interval: {INTERVAL}s
      threshold: 2
      iterations: 1000
      min_requests: 5
      metrics:
        - {{name: error-rate, max: 1}}
      match:
        - headers: {{x-beta: {{exact: "1"}}}}
"""
GOALS = """    mode: ab
    goals: [{name: checkout, path: /checkout, method: POST}]"""


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def _send(rig: Rig, method: str, path: str, user: str, beta: bool) -> str:
    assert rig.app is not None and rig.session is not None
    headers = {"user-id": user, **({"x-beta": "1"} if beta else {})}
    url = f"http://127.0.0.1:{rig.app.proxy_port}{path}"
    async with rig.session.request(method, url, headers=headers) as r:
        await r.read()
        return r.headers.get("x-version", "?")


async def _status(rig: Rig) -> dict[str, Any]:
    assert rig.app is not None and rig.session is not None
    async with rig.session.get(f"http://127.0.0.1:{rig.app.admin_port}/api/v1/status") as r:
        assert r.status == 200
        return await r.json()


async def test_users_reaching_the_goal_are_counted_per_version(rig: Rig) -> None:
    await rig.start(ANALYSIS, extra=GOALS)
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    served: dict[str, str] = {}
    for i in range(12):  # users 0-5 in the beta group (v2), 6-11 not (v1)
        served[f"u{i}"] = await _send(rig, "GET", "/?page=1", f"u{i}", beta=i < 6)
    assert set(served[f"u{i}"] for i in range(6)) == {"v2"}
    assert set(served[f"u{i}"] for i in range(6, 12)) == {"v1"}
    for user in ("u0", "u1", "u2", "u6"):  # 3 of 6 convert on v2, 1 of 6 on v1
        await _send(rig, "POST", "/checkout?from=cart", user, beta=user < "u6")
        await _send(rig, "POST", "/checkout", user, beta=user < "u6")  # counted once
    await _send(rig, "GET", "/checkout", "u3", beta=True)  # wrong method: no conversion
    await _send(rig, "POST", "/checkout", "", beta=True)  # no user key: not counted
    (canary,) = (await _status(rig))["canaries"]
    (res,) = canary["ab"]
    assert res["goal"] == "checkout"
    v1, v2 = res["versions"]["v1"], res["versions"]["v2"]
    assert (v2["users"], v2["converted"]) == (6, 3)
    assert (v1["users"], v1["converted"]) == (6, 1)


async def test_routes_without_goals_are_not_watched(rig: Rig) -> None:
    app = await rig.start(ANALYSIS, extra="    mode: ab")
    assert app._server is not None
    tracker = app._server.goals
    assert tracker is not None and not tracker.wants("default")
    await rig.action("start")
    await _send(rig, "POST", "/checkout", "u1", beta=True)
    (canary,) = (await _status(rig))["canaries"]
    assert not canary.get("ab")
