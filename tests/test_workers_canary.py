"""The canary controller in the supervisor judges the traffic its worker processes serve."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest
from test_canary_functional import Rig

from proxy.app import App


class WorkerRig(Rig):
    """The same rig with `serve --workers 2`: the data plane runs in two processes."""

    async def start_app(self) -> App:
        self.app = App(str(self.tmp / "config.yaml"), str(self.tmp / "state"), workers=2)
        await self.app.start()
        self.session = self.session or aiohttp.ClientSession()
        return self.app


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[WorkerRig]:
    r = WorkerRig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def test_healthy_canary_promotes_on_the_workers_counts(rig: WorkerRig) -> None:
    await rig.start()
    rig.load()
    assert (await rig.action("start"))[0] == 200
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded" and c["weight"] == 100.0
    assert all(ch["verdict"] == "pass" for ch in c["last_checks"])
    assert rig.seen.get("v2", 0) > 0
    assert rig.app is not None and rig.app.metrics.snapshot("default", "v2").total > 0


async def test_failing_canary_rolls_back_on_the_workers_counts(rig: WorkerRig) -> None:
    rig.v2.behaviour.error_rate = 0.5
    await rig.start()
    rig.load()
    assert (await rig.action("start"))[0] == 200
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Failed" and c["weight"] == 0.0
    assert rig.weights() == {"v1": 100.0, "v2": 0.0}
    assert any(ch["metric"] == "error-rate" and ch["verdict"] == "fail" for ch in c["last_checks"])


async def test_ab_goal_users_are_counted_once_across_workers(rig: WorkerRig) -> None:
    from test_dataplane_goals import ANALYSIS, GOALS

    await rig.start(ANALYSIS, extra=GOALS)
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    assert rig.app is not None
    url = f"http://127.0.0.1:{rig.app.proxy_port}"

    async def send(method: str, path: str, user: str) -> None:
        beta = {"x-beta": "1"} if int(user[1:]) < 6 else {}
        conn = aiohttp.TCPConnector(force_close=True)  # new connections: both workers serve
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.request(method, url + path, headers={"user-id": user, **beta}) as r:
                assert r.status == 200

    for i in range(12):  # u0-u5 see v2, u6-u11 v1; each user twice, maybe on both workers
        await send("GET", "/", f"u{i}")
        await send("GET", "/?again=1", f"u{i}")
    for user in ("u0", "u1", "u2", "u6"):
        await send("POST", "/checkout", user)
        await send("POST", "/checkout", user)
    want = {"v2": {"users": 6, "converted": 3}, "v1": {"users": 6, "converted": 1}}
    got: dict = {}
    for _ in range(50):  # the workers report every 250 ms
        (res,) = rig.canary().get("ab") or [{"versions": {}}]
        got = {v: {k: r[k] for k in ("users", "converted")} for v, r in res["versions"].items()}
        if got == want:
            break
        await asyncio.sleep(0.1)
    assert got == want
