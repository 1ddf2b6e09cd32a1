"""Every webhook type and alert kind against a real aiohttp receiver, through real rollouts."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from test_canary_functional import INTERVAL, Rig

from proxy.canary.webhooks import alert_body


class Receiver:
    """Answers each path with a settable status and records the JSON bodies it got."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.calls: dict[str, list[dict[str, Any]]] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.setdefault(name, []).append(await request.json())
        return web.Response(status=self.status.get(name, 200))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


def analysis(rx: Receiver, hooks: list[str], alerts: str = "", threshold: int = 2) -> str:
    lines = "\n".join(
        f'        - {{name: {h}, type: {h}, url: "{rx.url(h)}", timeout: 2s}}' for h in hooks
    )
    return f"""
      interval: {INTERVAL}s
      threshold: {threshold}
      step_weight: 25
      max_weight: 50
      min_requests: 5
      metrics:
        - {{name: error-rate, max: 1}}
      webhooks:
{lines}
      alerts: {alerts or "[]"}
"""


def test_alert_bodies() -> None:
    assert alert_body("slack", "hi") == {"text": "hi"}
    assert alert_body("dingtalk", "hi") == {"msgtype": "text", "text": {"content": "hi"}}
    assert alert_body("generic", "hi") == {"text": "hi"}


async def test_hooks_and_alerts_of_a_promoted_rollout(rig: Rig, receiver: Receiver) -> None:
    alerts = (
        f'[{{type: slack, url: "{receiver.url("slack")}"}}, '
        f'{{type: dingtalk, url: "{receiver.url("dingtalk")}"}}, '
        f'{{type: generic, url: "{receiver.url("generic")}"}}, '
        '{type: slack, url: "http://127.0.0.1:9/unreachable"}]'
    )
    hooks = ["pre-rollout", "rollout", "post-rollout", "event"]
    await rig.start(analysis(receiver, hooks, alerts))
    rig.load()
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded"
    await asyncio.sleep(0.3)  # alerts and post-rollout are fire-and-forget
    assert len(receiver.calls["pre-rollout"]) == 1
    assert len(receiver.calls["rollout"]) >= 2
    post = receiver.calls["post-rollout"]
    assert len(post) == 1 and post[0]["phase"] == "Succeeded" and post[0]["name"] == "web"
    phases = [e["phase"] for e in receiver.calls["event"]]
    assert phases[0] == "Initializing" and "Progressing" in phases and phases[-1] == "Succeeded"
    texts = [a["text"] for a in receiver.calls["slack"]]
    assert any("started" in t for t in texts) and any("promoted" in t for t in texts)
    assert any("step" in t for t in texts)
    assert receiver.calls["dingtalk"][0]["msgtype"] == "text"
    assert "promoted" in receiver.calls["generic"][-1]["text"]
    check = receiver.calls["rollout"][-1]
    assert {"name", "phase", "weight", "checks", "type"} <= set(check)


async def test_confirm_rollout_gate_holds_until_2xx(rig: Rig, receiver: Receiver) -> None:
    receiver.status["confirm-rollout"] = 403
    await rig.start(analysis(receiver, ["confirm-rollout"]))
    rig.load()
    await rig.action("start")
    await rig.wait_for(lambda c: len(receiver.calls.get("confirm-rollout", [])) >= 3)
    assert (rig.canary()["phase"], rig.weights()["v2"]) == ("Waiting", 0.0)
    receiver.status["confirm-rollout"] = 200
    assert (await rig.wait_phase({"Succeeded", "Failed"}))["phase"] == "Succeeded"


async def test_confirm_traffic_increase_holds_the_step(rig: Rig, receiver: Receiver) -> None:
    receiver.status["confirm-traffic-increase"] = 500
    await rig.start(analysis(receiver, ["confirm-traffic-increase"]))
    rig.load()
    await rig.action("start")
    await rig.wait_for(lambda c: len(receiver.calls.get("confirm-traffic-increase", [])) >= 3)
    c = rig.canary()
    assert (c["phase"], c["weight"], c["failed_checks"]) == ("Progressing", 25.0, 0)
    receiver.status["confirm-traffic-increase"] = 200
    assert (await rig.wait_phase({"Succeeded", "Failed"}))["phase"] == "Succeeded"


async def test_rollback_hook_fires_while_promotion_gate_holds(rig: Rig, receiver: Receiver) -> None:
    receiver.status["confirm-promotion"] = 403
    receiver.status["rollback"] = 404
    await rig.start(analysis(receiver, ["confirm-promotion", "rollback"]))
    rig.load()
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "WaitingPromotion")
    await asyncio.sleep(INTERVAL * 3)
    assert (rig.canary()["phase"], rig.weights()["v2"]) == ("WaitingPromotion", 50.0)
    receiver.status["rollback"] = 200
    c = await rig.wait_phase({"Failed"})
    assert "rollback webhook" in c["message"] and rig.weights()["v2"] == 0.0


@pytest.mark.parametrize("hook", ["pre-rollout", "rollout"])
async def test_failing_hook_counts_as_failed_check(rig: Rig, receiver: Receiver, hook: str) -> None:
    receiver.status[hook] = 500
    await rig.start(analysis(receiver, [hook]))
    rig.load()
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Failed" and c["failed_checks"] == 2
    assert rig.weights()["v2"] == 0.0
