"""Fleet mode end to end (SPEC §7): a real 3-member etcd on loopback, 3 replica processes of
`serve --store`, real upstreams and a bounded load. Figures are printed (run with -s to see
them) and the README's fleet table quotes them; the asserts are the contract."""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from tests.fleet.harness import Load, Replica
from tests.fleet.rig import TTL, Rig, canary_weights, canary_yaml

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
async def rig(tmp_path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        await r.aclose()


def p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


async def applied_everywhere(rig: Rig, revision: int, timeout: float = 5.0) -> float:
    """Seconds until every replica has applied `revision` (its status says so)."""
    t0 = time.monotonic()

    async def one(r: Replica) -> None:
        while (await rig.cluster_of(r))["revision"] < revision:
            assert time.monotonic() - t0 < timeout, f"{r.name} did not apply {revision}"
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(r) for r in rig.alive()))
    return time.monotonic() - t0


async def change(r: Replica, weights: dict[str, float], attempts: int = 40) -> dict:
    """PUT weights; a 503 (etcd electing) or 409 (lost race) is retried, as a script would."""
    for _ in range(attempts):
        status, body = await r.admin("PUT", "/api/v1/routes/default/weights", weights)
        if status == 200:
            return dict(body)
        assert status in (409, 503), (status, body)
        await asyncio.sleep(0.1)
    raise AssertionError(f"change {weights} never accepted")


async def test_weight_changes_reach_every_replica_whole_and_survive_the_etcd_leader(
    rig: Rig,
) -> None:
    await rig.start()
    load = Load([r.proxy_url + "/" for r in rig.replicas], rate=150, concurrency=6).start()
    rng = random.Random(5)
    seen_sets: set[tuple[float, float, float]] = {(100.0, 0.0, 0.0)}
    torn: list[tuple] = []
    delays: list[float] = []
    acked: list[int] = []

    async def watch_for_torn_sets(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for r in rig.alive():
                w = (await r.status())["routes"][0]["weights"]
                triple = (w["v1"], w["v2"], w["v3"])
                if triple not in seen_sets:
                    torn.append(triple)
            await asyncio.sleep(0.02)

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_for_torn_sets(stop))
    killed_at = 100
    started = time.monotonic()
    for i in range(200):
        if i == killed_at:
            rig.etcd.kill(await rig.etcd.leader_index())
        a = rng.randrange(0, 101)
        b = rng.randrange(0, 101 - a)
        triple = (float(a), float(b), float(100 - a - b))
        seen_sets.add(triple)
        body = await change(
            rng.choice(rig.replicas), dict(zip(("v1", "v2", "v3"), triple, strict=True))
        )
        acked.append(int(body["revision"]))
        delays.append(await applied_everywhere(rig, int(body["revision"])))
        await asyncio.sleep(max(0.0, started + (i + 1) / 5 - time.monotonic()))  # 5/s
    stop.set()
    await watcher
    summary = await load.stop()
    history = await rig.history()
    logged = {int(h["revision"]) for h in history}
    print(f"\npropagation p50 {statistics.median(delays) * 1000:.1f} ms, "
          f"p99 {p99(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms over {len(delays)} "
          f"changes; load {summary['ok']} ok / {summary['errors']} errors; etcd cpu/rss "
          f"{rig.etcd.cpu_rss()}")  # fmt: skip
    assert p99(delays) <= 1.0
    assert torn == []
    assert set(acked) <= logged and len(set(acked)) == 200  # no change lost
    assert summary["errors"] == 0, summary["error_samples"]


async def test_controller_survives_35_kills_without_losing_or_repeating_a_step(rig: Rig) -> None:
    await rig.start(canary=canary_yaml("1s", 4, 96))
    load = Load([r.proxy_url + "/" for r in rig.replicas], rate=120, concurrency=6).start()
    leader, epoch = await rig.leader()
    status, body = await leader.admin("POST", "/api/v1/canaries/shop/start")
    assert status == 200, body
    rng = random.Random(11)
    failovers: list[float] = []
    kills = 0
    restarts: list[asyncio.Task] = []
    while kills < 35:
        await asyncio.sleep(rng.uniform(0.2, 2.5))
        leader, epoch = await rig.leader()
        killed_at = time.monotonic()
        leader.kill()
        kills += 1
        restarts.append(asyncio.create_task(leader.restart()))
        new, epoch = await rig.leader(timeout=TTL + 10, not_epoch=epoch)
        failovers.append(time.monotonic() - killed_at)
        c = await rig.canary()
        if c["phase"] in ("Succeeded", "Failed"):
            await new.admin("POST", "/api/v1/canaries/shop/start")  # another rollout
        await asyncio.gather(*restarts)
        restarts.clear()
    summary = await load.stop()
    history = await rig.history()
    weights = canary_weights(history)
    rollouts = _rollouts(weights)
    print(
        f"\n{kills} leader kills; failover median {statistics.median(failovers):.2f} s, "
        f"max {max(failovers):.2f} s; {len(weights)} controller revisions in "
        f"{len(rollouts)} rollouts; load {summary['ok']} ok / {summary['errors']} errors"
    )
    assert max(failovers) <= TTL + 2.0
    for steps in rollouts:  # within a rollout each step once, in order, never back
        progressing = [w for w in steps if 0 < w < 100]
        assert progressing == sorted(set(progressing)), steps
        assert all(b - a == 4 for a, b in zip(progressing, progressing[1:], strict=False)), steps
    assert sum(len([w for w in s if 0 < w < 100]) for s in rollouts) >= 5  # it did progress


def _rollouts(weights: list[float]) -> list[list[float]]:
    """Split the canary's weights at each new start (back to the first step)."""
    out: list[list[float]] = [[]]
    for w in weights:
        if out[-1] and w <= 4 and out[-1][-1] != w:
            out.append([])
        out[-1].append(w)
    return out


@pytest.mark.parametrize("point", ["before-step:4", "after-step:4", "after-webhook:3"])
async def test_leader_killed_at_a_chosen_point_loses_and_repeats_nothing(
    rig: Rig, point: str, tmp_path
) -> None:
    hook = await _hook_server()
    extra = f"""      webhooks:
        - {{{{name: gate, type: rollout, url: "http://127.0.0.1:{hook.port}/gate"}}}}
"""
    await rig.start(canary=canary_yaml("1s", 10, 50, extra), env={"CANARYPROXY_CRASH_AT": point})
    load = Load([r.proxy_url + "/" for r in rig.replicas], rate=120, concurrency=6).start()
    leader, epoch = await rig.leader()
    assert leader is rig.replicas[0]  # the one with the crash point
    assert (await leader.admin("POST", "/api/v1/canaries/shop/start"))[0] == 200
    t0 = time.monotonic()
    while leader.pid is not None:  # it kills itself at the chosen point
        assert time.monotonic() - t0 < 30, "the crash point was never reached"
        await asyncio.sleep(0.05)
    new, _ = await rig.leader(timeout=TTL + 10, not_epoch=epoch)
    failover = time.monotonic() - t0
    c = await rig.wait_canary(lambda c: c["phase"] in ("Succeeded", "Failed"), 60)
    await load.stop()
    weights = canary_weights(await rig.history())
    progressing = [w for w in weights if 0 < w < 100]
    print(f"\n{point}: new leader {new.name}; weights {weights}; keys {hook.keys[:6]}")
    assert c["phase"] == "Succeeded"
    assert progressing == [10, 20, 30, 40, 50], weights
    steps = [int(k.split("/")[1]) for k in hook.keys]  # <rollout>/<step>/<hook>
    assert all(re.fullmatch(r"shop@\d+/\d+/gate", k) for k in hook.keys), hook.keys
    assert steps == sorted(steps)  # a new leader calls again at the same step, never back
    assert failover <= TTL + 10  # (measured from the start: the crash comes a step later)
    await hook.close()


class _Hook:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.port = 0
        self.runner = None

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _hook_server() -> _Hook:
    from aiohttp import web

    hook = _Hook()

    async def handle(request: web.Request) -> web.Response:
        hook.keys.append(request.headers.get("Idempotency-Key", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/gate", handle)
    hook.runner = web.AppRunner(app)
    await hook.runner.setup()
    site = web.TCPSite(hook.runner, "127.0.0.1", 0)
    await site.start()
    hook.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return hook


async def test_a_paused_leader_writes_nothing_after_it_resumes(rig: Rig) -> None:
    await rig.start(canary=canary_yaml("1s", 4, 96))
    load = Load([r.proxy_url + "/" for r in rig.replicas], rate=120, concurrency=6).start()
    leader, old = await rig.leader()
    assert (await leader.admin("POST", "/api/v1/canaries/shop/start"))[0] == 200
    await asyncio.sleep(2.5)
    leader.stop()
    paused_at = time.monotonic()
    new, epoch = await rig.leader(timeout=TTL + 10, not_epoch=old)
    await asyncio.sleep(max(0.0, paused_at + 2 * TTL - time.monotonic()))
    leader.cont()
    await asyncio.sleep(3.0)
    await load.stop()
    history = await rig.history()
    first_new = next(i for i, h in enumerate(history) if h.get("epoch") == epoch)
    stale = [h for h in history[first_new:] if h.get("epoch") == old]
    print(
        f"\npaused {leader.name} (epoch {old}); {new.name} leads (epoch {epoch}); "
        f"{len(history) - first_new} revisions since, {len(stale)} from the old epoch"
    )
    assert stale == []
    assert "stops leading" in leader.log_text() or "step not taken" in leader.log_text()


async def test_all_etcd_members_down_serving_goes_on_and_the_rollout_resumes(rig: Rig) -> None:
    await rig.start(canary=canary_yaml("1s", 4, 96))
    load = Load([r.proxy_url + "/" for r in rig.replicas], rate=120, concurrency=6).start()
    leader, _ = await rig.leader()
    assert (await leader.admin("POST", "/api/v1/canaries/shop/start"))[0] == 200
    await rig.wait_canary(lambda c: c["weight"] >= 8, 30)
    rig.etcd.stop_all()
    await asyncio.sleep(1.5)
    before = await rig.canary()
    refused = await rig.replicas[1].admin("PUT", "/api/v1/routes/default/weights", {"v1": 50})
    stale = (await rig.cluster_of(rig.replicas[2]))["stale_seconds"]
    await asyncio.sleep(28.5)
    during = await rig.canary()
    await rig.etcd.start_all_again()
    resumed = await rig.wait_canary(lambda c: c["weight"] > during["weight"], 30)
    summary = await load.stop()
    print(
        f"\netcd down 30 s: {summary['ok']} ok / {summary['errors']} errors; weight "
        f"{before['weight']} -> {during['weight']} -> {resumed['weight']}; refused with "
        f"{refused[0]}; stale {stale} s at 1.5 s"
    )
    assert summary["errors"] == 0, summary["error_samples"]
    assert refused[0] == 503
    assert during["weight"] == before["weight"]  # no step while etcd was away
    assert resumed["weight"] == during["weight"] + 4  # the next step, not a restart


async def test_a_bad_canary_is_caught_on_fleet_numbers_and_a_quiet_one_holds(rig: Rig) -> None:
    await rig.start(canary=canary_yaml("2s", 10, 50), v2_error_rate=0.05)
    leader, _ = await rig.leader()
    others = [r for r in rig.replicas if r is not leader]
    # No traffic yet: a canary without data holds at its first step.
    assert (await leader.admin("POST", "/api/v1/canaries/shop/start"))[0] == 200
    await asyncio.sleep(5)
    quiet = await rig.canary()
    assert quiet["phase"] == "Progressing" and quiet["weight"] == 10, quiet
    # Traffic only through the other replicas: the leader alone sees none of it.
    load = Load([r.proxy_url + "/" for r in others], rate=200, concurrency=8).start()
    t0 = time.monotonic()
    c = await rig.wait_canary(lambda c: c["phase"] == "Failed", 3 * 2 + 4)
    caught = time.monotonic() - t0
    await load.stop()
    print(f"\nbad canary rolled back after {caught:.1f} s (interval 2 s): {c['message']}")
    assert caught <= 2 * 2 + 1.5
