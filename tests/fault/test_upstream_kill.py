"""Upstream kill (RELIABILITY run L4): `kill -9` one version mid-load, then restart it.

Errors must stay with the killed version and inside the kill window, no POST may reach
an upstream twice (the proxy must not replay non-idempotent requests), and every
request gets an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ProxyFactory
from .harness import Load, UpstreamProcess, metric_values, summarize

pytestmark = pytest.mark.slow

KILL_AT, RESTART_AT, SECONDS = 3.0, 7.0, 11.0


@pytest.fixture
def own_upstreams(fault_tmp: Path) -> Iterator[dict[str, UpstreamProcess]]:
    started: dict[str, UpstreamProcess] = {}
    stamp = time.time_ns()
    try:
        for name in ("v1", "v2"):
            log = fault_tmp / f"kill-{stamp}-{name}.jsonl"
            started[name] = UpstreamProcess(name, log).start()
        yield started
    finally:
        for u in started.values():
            u.stop()


async def _kill_and_restart(victim: UpstreamProcess, t0: float) -> tuple[float, float]:
    await asyncio.sleep(KILL_AT - (time.time() - t0))
    victim.kill()
    killed = time.time()
    await asyncio.sleep(RESTART_AT - KILL_AT)
    victim.start()  # same port: the proxy's config does not change
    return killed, time.time()


RETRIES = 'retries: {attempts: 2, retry_on: [connect-failure, reset, "502", "503"]}'


@pytest.mark.parametrize("route_opts", ["", RETRIES], ids=["no-retries", "retries"])
async def test_upstream_kill_confined_and_no_duplicate_posts(
    make_proxy: ProxyFactory, own_upstreams: dict[str, UpstreamProcess], route_opts: str
) -> None:
    v1, v2 = own_upstreams["v1"], own_upstreams["v2"]
    proxy = make_proxy(upstreams={"v1": v1.address, "v2": v2.address}, route_opts=route_opts)
    load = Load(proxy.port, rate=100, seconds=SECONDS, run=f"kill-{time.time_ns()}")
    t0 = time.time()
    task = asyncio.create_task(load.run_load())
    killed, restarted = await _kill_and_restart(v2, t0)
    ledger = await asyncio.wait_for(task, 60)
    s = summarize(ledger, [v1, v2], load.run)
    codes = await metric_values(proxy.admin_port, "canaryproxy_requests_total")
    window = s.pop("error_window")
    print(
        "upstream kill:", s, "window vs kill:", window and (window[0] - killed, window[1] - killed)
    )
    assert s["sent"] == s["answered"], s
    assert not s["duplicated_posts"], s["duplicated_posts"]
    v1_5xx = [k for k, v in codes.items() if 'version="v1"' in k and 'code="5' in k and v]
    assert not v1_5xx, f"errors leaked to the healthy version: {v1_5xx}"
    if window is not None:  # a fast ejection may leave no error at all
        assert killed - 0.5 <= window[0] and window[1] <= restarted + 2.0, (window, killed)
    ok_ids = {e.rid for e in ledger if e.status == 200}
    got = {r["rid"] for u in (v1, v2) for r in u.records() if r["rid"].startswith(load.run)}
    assert ok_ids <= got, "a 200 for a request no upstream received"
