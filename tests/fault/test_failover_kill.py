"""Failover under load: `kill -9` the canary's only upstream while 4 clients POST.

v1 and v2 have one upstream process each (the recording upstream: every request id it
receives is in its log before it answers) and split 50/50 with `failover: connect`. The
requests in flight to v2 at the kill are lost with it (a POST is never sent twice); every
later one that picks v2 is refused, and goes to v1 (`x-canaryproxy-failover: v2->v1`).

Goal: errors <= requests in flight at the kill, error window (first to last error) < 1 s,
0 POSTs received twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httptools
import pytest

from .conftest import ProxyFactory
from .harness import Conn, UpstreamProcess, metric_values

pytestmark = pytest.mark.slow

CLIENTS, BEFORE, AFTER = 4, 1.5, 2.0  # clients; seconds of load before and after the kill
# Each upstream answers 10 ms after it received (and recorded) a request, so that the kill
# finds requests at v2 that it received but never answered: the case a resend would duplicate.
PATH = "/slow?ms=10"


@dataclass
class Sent:
    rid: str
    sent_at: float
    done_at: float = 0.0
    status: int | None = None  # None: no answer (transport error)
    failover: str = ""


@pytest.fixture
def pair(fault_tmp: Path) -> Iterator[dict[str, UpstreamProcess]]:
    started: dict[str, UpstreamProcess] = {}
    stamp = time.time_ns()
    try:
        for name in ("v1", "v2"):
            started[name] = UpstreamProcess(name, fault_tmp / f"fo-{stamp}-{name}.jsonl").start()
        yield started
    finally:
        for u in started.values():
            u.stop()


async def _client(port: int, run: str, ledger: list[Sent], stop: asyncio.Event) -> None:
    """POST continuously on one keep-alive connection (a new one after a close)."""
    conn: Conn | None = None
    for n in itertools.count():
        if stop.is_set():
            break
        e = Sent(f"{run}-{n}", time.time())
        ledger.append(e)
        try:
            conn = conn or await Conn.open(port)
            status, headers, _ = await conn.request("POST", PATH, {"X-Req-Id": e.rid}, b"x" * 64)
            e.status, e.failover = status, headers.get("x-canaryproxy-failover", "")
            if not conn.reusable:
                await conn.close()
                conn = None
        except (TimeoutError, OSError, httptools.HttpParserError):
            if conn is not None:
                await conn.close()
            conn = None
        e.done_at = time.time()
    if conn is not None:
        await conn.close()


async def test_kill_of_the_canary_fails_over_without_duplicates(
    make_proxy: ProxyFactory, pair: dict[str, UpstreamProcess]
) -> None:
    v1, v2 = pair["v1"], pair["v2"]
    proxy = make_proxy(upstreams={"v1": v1.address, "v2": v2.address})
    run, stop = f"fo-{time.time_ns()}", asyncio.Event()
    ledgers: list[list[Sent]] = [[] for _ in range(CLIENTS)]
    tasks = [
        asyncio.create_task(_client(proxy.port, f"{run}-c{i}", ledgers[i], stop))
        for i in range(CLIENTS)
    ]
    await asyncio.sleep(BEFORE)
    killed = time.time()
    await asyncio.to_thread(v2.kill)  # SIGKILL and reap, while the clients go on
    dead = time.time()
    await asyncio.sleep(AFTER)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)

    ledger = [e for lg in ledgers for e in lg]
    errors = [e for e in ledger if e.status is None or e.status >= 500]
    # In flight at the kill: sent before v2 was gone, answered after the signal. A dying
    # process takes a few ms to close its sockets; a POST written to a pooled connection to
    # it meanwhile is lost with it, and is counted here too (`at_signal` is the narrower set).
    in_flight = [e for e in ledger if e.sent_at <= dead and e.done_at >= killed]
    at_signal = [e for e in ledger if e.sent_at <= killed <= e.done_at]
    received = Counter(r["rid"] for u in (v1, v2) for r in u.records() if r["rid"].startswith(run))
    duplicated = sorted(rid for rid, n in received.items() if n > 1)
    window = max(e.done_at for e in errors) - min(e.done_at for e in errors) if errors else 0.0
    after = [e for e in ledger if e.sent_at > dead + 0.2]
    failovers = sum(1 for e in ledger if e.failover == "v2->v1")
    codes = await metric_values(proxy.admin_port, "canaryproxy_requests_total")
    v2_failed = sum(v for k, v in codes.items() if 'version="v2"' in k and 'code="5' in k)
    print(
        f"\nfailover kill: {len(ledger)} POSTs, {len(in_flight)} in flight at the kill "
        f"({len(at_signal)} at the signal; {(dead - killed) * 1000:.1f} ms from SIGKILL to reaped), "
        f"{len(errors)} errors {[e.status for e in errors]}, error window {window * 1000:.1f} ms, "
        f"{len(duplicated)} duplicated, {failovers} failed over, "
        f"{v2_failed:.0f} counted as failed for v2"
    )
    assert len(errors) <= len(in_flight), [(e.rid, e.status) for e in errors]
    assert window < 1.0
    assert not duplicated, duplicated
    assert after and all(e.status == 200 for e in after)  # only v1 left, and it answers
    assert failovers > 0 and v2_failed >= failovers  # each failover counted against v2
    ok = {e.rid for e in ledger if e.status == 200}
    assert ok <= set(received), "a 200 for a POST no upstream received"
