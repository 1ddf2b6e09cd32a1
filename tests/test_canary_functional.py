"""Rollouts end to end: real aiohttp upstreams, the real proxy, real HTTP, short intervals."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from proxy.app import App
from proxy.demo_upstream import Behaviour, Upstream

INTERVAL = 0.3


def config_text(v1: str, v2: str, analysis: str, extra: str = "", route_extra: str = "") -> str:
    return f"""
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
access_log: false
upstreams:
  v1: {{endpoints: ["{v1}"]}}
  v2: {{endpoints: ["{v2}"]}}
routes:
  - name: default
    route: [{{destination: v1, weight: 100}}, {{destination: v2, weight: 0}}]
{route_extra}
canaries:
  - name: web
    route: default
    stable: v1
    canary: v2
{extra}
    analysis:
{analysis}
"""


DEFAULT_ANALYSIS = f"""
      interval: {INTERVAL}s
      threshold: 2
      step_weight: 25
      max_weight: 50
      min_requests: 5
      metrics:
        - {{name: error-rate, max: 1}}
        - {{name: request-duration, max: 500}}
"""


class Rig:
    """Two upstreams, the proxy with one canary `web`, and a steady client load."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.v1 = Upstream(Behaviour("v1"))
        self.v2 = Upstream(Behaviour("v2"))
        self.app: App | None = None
        self.seen: dict[str, int] = {}
        self._load: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(
        self, analysis: str = DEFAULT_ANALYSIS, extra: str = "", route_extra: str = ""
    ) -> App:
        await self.v1.start()
        await self.v2.start()
        path = self.tmp / "config.yaml"
        text = config_text(self.v1.address, self.v2.address, analysis, extra, route_extra)
        path.write_text(text)
        return await self.start_app()

    async def start_app(self) -> App:
        self.app = App(str(self.tmp / "config.yaml"), str(self.tmp / "state"))
        await self.app.start()
        self.session = self.session or aiohttp.ClientSession()
        return self.app

    def load(
        self,
        concurrency: int = 4,
        pause: float = 0.005,
        headers: Callable[[int], dict[str, str]] | None = None,
        seen: Callable[[dict[str, str], str], None] | None = None,
    ) -> None:
        """Steady requests; `headers(n)` shapes request n, `seen(headers, version)` watches."""
        work = self._run_load(concurrency, pause, headers or (lambda n: {}), seen)
        self._load = asyncio.get_running_loop().create_task(work)

    async def _run_load(
        self,
        concurrency: int,
        pause: float,
        headers: Callable[[int], dict[str, str]],
        seen: Callable[[dict[str, str], str], None] | None,
    ) -> None:
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while True:
                assert self.app is not None and self.session is not None
                url = f"http://127.0.0.1:{self.app.proxy_port}/"
                sent += 1
                h = headers(sent)
                with contextlib.suppress(aiohttp.ClientError):
                    async with self.session.get(url, headers=h) as r:
                        await r.read()
                        v = r.headers.get("x-version", "?")
                        self.seen[v] = self.seen.get(v, 0) + 1
                        if seen is not None:
                            seen(h, v)
                await asyncio.sleep(pause)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def stop_load(self) -> None:
        if self._load:
            self._load.cancel()
            await asyncio.gather(self._load, return_exceptions=True)
            self._load = None

    def canary(self) -> dict[str, Any]:
        assert self.app is not None
        (c,) = self.app.canaries.status()
        return dict(c)

    async def wait_phase(self, phases: set[str], timeout: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while self.canary()["phase"] not in phases:
                await asyncio.sleep(0.05)
        return self.canary()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.canary()):
                await asyncio.sleep(0.05)

    async def action(self, verb: str) -> tuple[int, dict[str, Any]]:
        assert self.app is not None and self.session is not None
        url = f"http://127.0.0.1:{self.app.admin_port}/api/v1/canaries/web/{verb}"
        async with self.session.post(url) as r:
            return r.status, await r.json()

    def weights(self) -> dict[str, float]:
        assert self.app is not None and self.app.table is not None
        return dict(self.app.table.weights()["default"])

    async def stop_app(self) -> None:
        if self.app is not None:
            # App.stop() does not await the async ConfigWatcher.stop() yet: stop it here.
            watcher = self.app.reloader.watcher
            if watcher is not None and asyncio.iscoroutinefunction(watcher.stop):
                await watcher.stop()
                self.app.reloader.watcher = None
            await self.app.stop()
            self.app = None

    async def close(self) -> None:
        await self.stop_load()
        await self.stop_app()
        if self.session:
            await self.session.close()
        await self.v1.stop()
        await self.v2.stop()


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.close()


async def test_first_sight_waits_idle_with_canary_at_zero(rig: Rig) -> None:
    await rig.start()
    c = rig.canary()
    assert (c["phase"], c["weight"]) == ("Idle", 0.0)
    assert rig.weights() == {"v1": 100.0, "v2": 0.0}
    assert [s["weight"] for s in c["steps"]] == [25.0, 50.0]


async def test_healthy_canary_steps_up_and_promotes(rig: Rig) -> None:
    await rig.start()
    rig.load()
    assert (await rig.action("start"))[0] == 200
    await rig.wait_for(lambda c: c["phase"] == "Progressing" and c["weight"] == 25.0)
    assert rig.weights() == {"v1": 75.0, "v2": 25.0}
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded" and c["weight"] == 100.0 and c["promoted"]
    assert rig.weights() == {"v1": 0.0, "v2": 100.0}
    assert {ch["metric"] for ch in c["last_checks"]} == {"error-rate", "request-duration"}
    assert all(ch["verdict"] == "pass" for ch in c["last_checks"])
    assert rig.seen.get("v2", 0) > 0


async def test_ten_percent_errors_roll_back(rig: Rig) -> None:
    await rig.start()
    rig.v2.behaviour.error_rate = 0.10
    rig.load()
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Failed" and c["failed_checks"] == 2
    assert rig.weights() == {"v1": 100.0, "v2": 0.0}
    (err,) = [ch for ch in c["last_checks"] if ch["metric"] == "error-rate"]
    assert err["verdict"] == "fail" and err["value"] > 1


async def test_slow_canary_rolls_back_on_p99(rig: Rig) -> None:
    await rig.start()
    rig.v2.behaviour.latency_ms = 800
    rig.load(concurrency=8)
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"}, timeout=30)
    assert c["phase"] == "Failed"
    (dur,) = [ch for ch in c["last_checks"] if ch["metric"] == "request-duration"]
    assert dur["verdict"] == "fail" and dur["value"] > 500


async def test_quiet_traffic_holds_then_hits_the_deadline(rig: Rig) -> None:
    analysis = DEFAULT_ANALYSIS.replace("min_requests: 5", "min_requests: 1000000") + (
        "      progress_deadline: 1.5s\n"
    )
    await rig.start(analysis)
    rig.load(concurrency=1, pause=0.05)
    await rig.action("start")
    await rig.wait_for(lambda c: "not enough data" in c["message"])
    c = rig.canary()
    assert (c["phase"], c["weight"], c["failed_checks"]) == ("Progressing", 25.0, 0)
    c = await rig.wait_phase({"Failed", "Succeeded"})
    assert c["phase"] == "Failed" and "deadline" in c["message"]
    assert rig.weights()["v2"] == 0.0


async def test_pause_resume_promote_and_abort(rig: Rig) -> None:
    await rig.start(DEFAULT_ANALYSIS.replace("max_weight: 50", "max_weight: 100"))
    rig.load()
    assert (await rig.action("pause"))[0] == 400  # Idle: nothing to pause
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    status, body = await rig.action("pause")
    assert status == 200
    held = rig.canary()
    await asyncio.sleep(INTERVAL * 4)
    assert (rig.canary()["phase"], rig.canary()["weight"]) == ("Paused", held["weight"])
    assert (await rig.action("resume"))[0] == 200
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    assert (await rig.action("promote"))[0] == 200
    c = await rig.wait_phase({"Succeeded"})
    assert rig.weights() == {"v1": 0.0, "v2": 100.0}
    status, body = await rig.action("abort")
    assert status == 400 and "Succeeded" in body["error"]
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing")
    assert (await rig.action("abort"))[0] == 200
    c = rig.canary()
    assert c["phase"] == "Failed" and rig.weights() == {"v1": 100.0, "v2": 0.0}


async def test_unknown_canary_and_verb(rig: Rig) -> None:
    app = await rig.start()
    with pytest.raises(KeyError):
        await app.canaries.action("nope", "start")
    ok, reason = await app.canaries.action("web", "explode")
    assert not ok and "unknown action" in reason


async def test_reload_with_new_revision_starts_a_rollout(rig: Rig) -> None:
    app = await rig.start(extra="    revision: a")
    rig.load()
    path = rig.tmp / "config.yaml"
    path.write_text(path.read_text().replace("revision: a", "revision: b"))
    app.reload()
    assert app.last_reload_error is None
    await rig.wait_phase({"Progressing", "Succeeded"})
    assert rig.canary()["started_at"] is not None


async def test_reload_with_new_canary_endpoints_starts_a_rollout(rig: Rig) -> None:
    app = await rig.start()
    rig.load()
    await rig.action("start")
    await rig.wait_phase({"Succeeded"})
    fresh = Upstream(Behaviour("v2-new"))
    await fresh.start()
    try:
        path = rig.tmp / "config.yaml"
        path.write_text(path.read_text().replace(rig.v2.address, fresh.address))
        app.reload()
        await rig.wait_for(lambda c: c["phase"] == "Progressing" and c["weight"] > 0)
        await rig.wait_for(lambda c: rig.seen.get("v2-new", 0) > 0)
        assert rig.canary()["failed_checks"] == 0
        assert (await rig.wait_phase({"Succeeded", "Failed"}))["phase"] == "Succeeded"
    finally:
        await rig.stop_load()
        await fresh.stop()


async def test_dry_run_records_verdicts_but_never_moves_traffic(rig: Rig) -> None:
    # The canary gets traffic from the file's own weights; the controller only watches.
    await rig.start(DEFAULT_ANALYSIS + "      dry_run: true\n")
    path = rig.tmp / "config.yaml"
    path.write_text(
        path.read_text().replace(
            "weight: 100}, {destination: v2, weight: 0}",
            "weight: 50}, {destination: v2, weight: 50}",
        )
    )
    await rig.stop_app()
    await rig.start_app()
    rig.v2.behaviour.error_rate = 0.5
    rig.load()
    await rig.action("start")
    c = await rig.wait_phase({"Failed"})
    assert c["dry_run"] and any(ch["verdict"] == "fail" for ch in c["last_checks"])
    assert rig.weights() == {"v1": 50.0, "v2": 50.0}


async def test_compare_judge_promotes_a_canary_like_stable(rig: Rig) -> None:
    analysis = DEFAULT_ANALYSIS + "      judge: compare\n"
    await rig.start(analysis)
    rig.load()
    await rig.action("start")
    c = await rig.wait_phase({"Succeeded", "Failed"})
    assert c["phase"] == "Succeeded"
    assert all("vs stable" in ch["detail"] for ch in c["last_checks"])


async def test_metrics_export_weight_status_and_checks(rig: Rig) -> None:
    app = await rig.start()
    rig.v2.behaviour.error_rate = 0.5
    rig.load()
    await rig.action("start")
    await rig.wait_phase({"Failed"})
    assert rig.session is not None
    async with rig.session.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r:
        text = await r.text()
    assert 'canaryproxy_canary_status{canary="web"} 2.0' in text
    assert 'canaryproxy_canary_weight{canary="web"} 0.0' in text
    assert 'canaryproxy_canary_check_value{canary="web",metric="error-rate"}' in text


async def test_state_survives_an_in_process_restart(rig: Rig) -> None:
    await rig.start(DEFAULT_ANALYSIS.replace("max_weight: 50", "max_weight: 100"))
    rig.load()
    await rig.action("start")
    await rig.wait_for(lambda c: c["phase"] == "Progressing" and c["weight"] >= 50)
    await rig.action("pause")
    before = rig.canary()
    await rig.stop_load()
    await rig.stop_app()
    await rig.start_app()
    after = rig.canary()
    assert (after["phase"], after["weight"], after["step"]) == (
        "Paused",
        before["weight"],
        before["step"],
    )
    assert rig.weights()["v2"] == before["weight"]


async def test_finished_rollout_survives_restart_and_keeps_manual_weights(rig: Rig) -> None:
    app = await rig.start()
    rig.load()
    await rig.action("start")
    await rig.wait_phase({"Succeeded"})
    await rig.stop_load()
    await rig.stop_app()
    app = await rig.start_app()
    assert (rig.canary()["phase"], rig.weights()) == ("Succeeded", {"v1": 0.0, "v2": 100.0})
    await app.control.set_weights("default", {"v1": 60.0, "v2": 40.0})  # an operator takes over
    await rig.stop_app()
    await rig.start_app()
    assert (rig.canary()["phase"], rig.weights()) == ("Succeeded", {"v1": 60.0, "v2": 40.0})
