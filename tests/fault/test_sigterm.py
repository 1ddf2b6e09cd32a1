"""SIGTERM under load (RELIABILITY run L6, Envoy's handoff pattern).

Slow requests are in flight and new ones keep arriving when the proxy gets SIGTERM:
every request that reached an upstream must get its answer, the slow ones included,
and the proxy must exit 0 within its drain timeout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import ProxyFactory
from .harness import Entry, Load, UpstreamProcess, fetch, summarize

pytestmark = pytest.mark.slow

DRAIN = 5.0
SLOW_MS = 2500


async def _slow(port: int, i: int, run: str) -> Entry:
    e = Entry(f"{run}-slow{i}", "GET", time.time())
    try:
        status, _, _ = await fetch(port, "GET", f"/slow?ms={SLOW_MS}", headers={"X-Req-Id": e.rid})
        e.status = status
    except (TimeoutError, OSError) as exc:
        e.error = type(exc).__name__
    return e


async def test_sigterm_finishes_in_flight_requests(
    make_proxy: ProxyFactory, upstreams: dict[str, UpstreamProcess]
) -> None:
    ups = {n: upstreams[n].address for n in ("v1", "v2")}
    proxy = make_proxy(upstreams=ups, limits={"drain_timeout": f"{DRAIN}s"})
    run = f"term-{time.time_ns()}"
    slow = [asyncio.create_task(_slow(proxy.port, i, run)) for i in range(5)]
    load = Load(proxy.port, rate=100, seconds=4, run=run, new_conn_each=True)
    load_task = asyncio.create_task(load.run_load())
    await asyncio.sleep(1.0)
    term_at = time.monotonic()
    proxy.signal(15)
    slow_done = await asyncio.wait_for(asyncio.gather(*slow), 20)
    ledger = await asyncio.wait_for(load_task, 40)
    assert proxy.proc is not None
    code = await asyncio.to_thread(proxy.proc.wait, DRAIN + 5)
    exit_after = time.monotonic() - term_at
    received = {r["rid"] for u in upstreams.values() for r in u.records()}
    lost = [e.rid for e in ledger + slow_done if e.rid in received and e.status is None]
    s = summarize(ledger, [upstreams["v1"], upstreams["v2"]], run)
    refused = sum(1 for e in ledger if e.error and e.rid not in received)
    print("sigterm:", s["sent"], s["answered"], "refused", refused, "lost", len(lost),
          "exit after", round(exit_after, 2))  # fmt: skip
    assert [e.status for e in slow_done] == [200] * 5, slow_done
    assert not lost, f"requests that reached an upstream got no answer: {lost[:5]}"
    assert code == 0 and exit_after <= DRAIN + 1.0, (code, exit_after)
    assert all(e.status in (200, 503) for e in ledger if e.status is not None)
