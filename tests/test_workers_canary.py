"""The canary controller in the supervisor judges the traffic its worker processes serve."""

from __future__ import annotations

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
