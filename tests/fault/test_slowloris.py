"""Slowloris (RELIABILITY run L7): 500 connections trickle a request head byte by byte.

The absolute header deadline (not reset by trickled bytes) must close every one of
them, normal clients must still be served, and the fd count must return to baseline.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import ProxyFactory
from .harness import Load, UpstreamProcess, summarize

pytestmark = pytest.mark.slow

SLOW_CONNS = 500
HEADER_TIMEOUT = 2.0
TRICKLE_EVERY = 0.4


async def _trickle(port: int, results: list[tuple[float, bytes]]) -> None:
    """Send a head one header line at a time; record when the proxy closed us and why."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    try:
        writer.write(b"GET /slowloris HTTP/1.1\r\nHost: localhost\r\n")
        for i in range(int(4 * HEADER_TIMEOUT / TRICKLE_EVERY)):
            try:
                answer = await asyncio.wait_for(reader.read(4096), TRICKLE_EVERY)
            except TimeoutError:
                writer.write(b"X-Trickle-%d: x\r\n" % i)
                continue
            break  # an answer or EOF: the proxy gave up on us
    except OSError:
        pass
    finally:
        results.append((time.monotonic() - start, answer))
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def test_slowloris_closed_at_deadline_and_others_served(
    make_proxy: ProxyFactory, upstreams: dict[str, UpstreamProcess]
) -> None:
    ups = {n: upstreams[n].address for n in ("v1", "v2")}
    proxy = make_proxy(upstreams=ups, limits={"header_timeout": f"{HEADER_TIMEOUT}s"})
    baseline = proxy.fd_count()
    closed: list[tuple[float, bytes]] = []
    slow = [asyncio.create_task(_trickle(proxy.port, closed)) for _ in range(SLOW_CONNS)]
    peak = 0
    for _ in range(12):  # while they are all still inside their header deadline
        await asyncio.sleep(0.1)
        peak = max(peak, proxy.fd_count())
    load = Load(proxy.port, rate=50, seconds=4, run=f"loris-{time.time_ns()}")
    ledger = await asyncio.wait_for(load.run_load(), 40)
    await asyncio.wait_for(asyncio.gather(*slow), 30)
    s = summarize(ledger, [upstreams["v1"], upstreams["v2"]], load.run)
    late = [t for t, _ in closed if t > HEADER_TIMEOUT + 1.5]
    got_408 = sum(1 for _, a in closed if a.startswith(b"HTTP/1.1 408"))
    print("slowloris:", s["sent"], s["ok"], "fd peak", peak, "408s", got_408, "late", len(late))
    assert peak >= baseline + SLOW_CONNS // 2, "the slow connections were not open at once"
    assert s["sent"] == s["answered"] == s["ok"], s
    assert len(closed) == SLOW_CONNS and not late, f"{len(late)} closed after the deadline"
    assert got_408 == SLOW_CONNS, f"only {got_408} answered 408"
    assert proxy.fds_back_to(baseline), (proxy.fd_count(), baseline)
