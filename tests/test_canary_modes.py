"""blue-green and ab modes end to end, and A/B goal results in status."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import pytest
from test_canary_functional import INTERVAL, Rig


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


def analysis(extra: str) -> str:
    return f"""
      interval: {INTERVAL}s
      threshold: 2
      iterations: 3
      min_requests: 5
      metrics:
        - {{name: error-rate, max: 1}}
{extra}"""


async def test_blue_green_analyses_the_idle_color_through_preview_then_switches(rig: Rig) -> None:
    preview_versions: set[str] = set()
    plain_versions_during: set[str] = set()
    watching = [False]

    def watch(h: dict[str, str], v: str) -> None:
        if watching[0] and rig.canary()["phase"] == "Progressing":
            (preview_versions if h else plain_versions_during).add(v)

    await rig.start(analysis(""), extra="    mode: blue-green",
                    route_extra="    preview: {header: x-preview, value: green}")  # fmt: skip
    rig.load(headers=lambda n: {"x-preview": "green"} if n % 3 == 0 else {}, seen=watch)
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    await asyncio.sleep(0.1)  # requests decided before the step are not evidence
    watching[0] = True
    assert rig.weights() == {"v1": 100.0, "v2": 0.0}
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded" and rig.weights() == {"v1": 0.0, "v2": 100.0}
    assert preview_versions == {"v2"} and plain_versions_during == {"v1"}


async def test_blue_green_bad_green_never_gets_live_traffic(rig: Rig) -> None:
    await rig.start(analysis(""), extra="    mode: blue-green",
                    route_extra="    preview: {header: x-preview, value: green}")  # fmt: skip
    rig.v2.behaviour.error_rate = 0.3
    rig.load(headers=lambda n: {"x-preview": "green"} if n % 3 == 0 else {})
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Failed" and rig.weights() == {"v1": 100.0, "v2": 0.0}


AB = """      match:
        - headers: {x-beta: {exact: "1"}}
"""


async def test_ab_shows_the_canary_only_to_matched_users(rig: Rig) -> None:
    by_group: dict[bool, set[str]] = {True: set(), False: set()}
    watching = [False]

    def watch(h: dict[str, str], v: str) -> None:
        if watching[0] and rig.canary()["phase"] == "Progressing":
            by_group["x-beta" in h].add(v)

    await rig.start(analysis(AB), extra="    mode: ab")
    rig.load(headers=lambda n: {"x-beta": "1"} if n % 2 else {}, seen=watch)
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    await asyncio.sleep(0.1)
    watching[0] = True
    assert rig.weights() == {"v1": 100.0, "v2": 0.0}
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded"
    assert by_group == {True: {"v2"}, False: {"v1"}}


GOALS = """    mode: ab
    goals: [{name: checkout, path: /checkout, method: POST}]"""


async def test_ab_goal_results_in_status(rig: Rig) -> None:
    app = await rig.start(analysis(AB).replace("iterations: 3", "iterations: 1000"), extra=GOALS)
    await rig.action("start")
    goals = app.canaries.goals
    # What the data plane reports per answered request of the route (see GoalTracker.record).
    for i in range(300):
        version = "v2" if i % 2 else "v1"
        goals.record("default", version, "GET", "/", f"user{i}")
        if (version == "v2" and i % 3 == 0) or (version == "v1" and i % 10 == 0):
            goals.record("default", version, "POST", "/checkout", f"user{i}")
    (res,) = rig.canary()["ab"]
    assert res["goal"] == "checkout" and res["winner"] == "v2"
    lo, hi = res["versions"]["v2"]["ci"]
    assert lo < res["versions"]["v2"]["rate"] < hi
