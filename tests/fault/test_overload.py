"""Overload (issue item 5, RELIABILITY runs L5/L8): admission limits hold against real sockets.

A hung upstream ties up no more than the route's `max_requests`: the excess gets a 503 with
`Retry-After` at once, the admitted ones a 504 at the route timeout, and other routes keep
being served. An upstream of fixed capacity offered more than the limit sees at most the
limit; every client gets a 200 or such a 503, none a timeout. No timing is asserted: the
order of events and the counts are. Figures (latency, goodput) are in benchmarks/overload.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import require_proxy
from .harness import REPO, Conn, ProxyProcess, UpstreamProcess, fetch

pytestmark = pytest.mark.slow

LIMIT = 4
BURST = 20
HANG_TIMEOUT = 3.0


class Capped:
    """`benchmarks.hang_upstream`: a capped port (N workers) and a hanging port, with stats."""

    def __init__(self, concurrency: int, service_ms: float) -> None:
        cmd = [sys.executable, "-m", "benchmarks.hang_upstream"]
        cmd += ["--concurrency", str(concurrency), "--service-ms", str(service_ms)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: READY or EOF when it exits
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"hang_upstream did not start: {line!r}")
        self.capped, self.hang, self.stats_port = (int(x) for x in line.split()[1:])

    async def stats(self) -> dict[str, dict[str, int]]:
        _, _, body = await fetch(self.stats_port, "GET", "/")
        return dict(json.loads(body))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def capped_factory() -> Iterator[Callable[[int, float], Capped]]:
    started: list[Capped] = []

    def make(concurrency: int, service_ms: float) -> Capped:
        started.append(Capped(concurrency, service_ms))
        return started[-1]

    try:
        yield make
    finally:
        for c in started:
            c.stop()


@pytest.fixture
def start_proxy(fault_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Callable]:
    """Start the proxy with a config made from (listen port, admin port)."""
    require_proxy()
    started: list[ProxyProcess] = []

    def start(make_config: Callable[[int, int], str]) -> ProxyProcess:
        p = ProxyProcess(fault_tmp / f"{request.node.name[:40]}-{len(started)}")
        p.config = make_config(p.port, p.admin_port)
        started.append(p)
        return p.start()

    try:
        yield start
    finally:
        for p in started:
            p.stop()


def admin_headers() -> dict[str, str]:
    token = os.environ.get("CANARYPROXY_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _hang_request(conn: Conn, order: list[tuple[int, int]], i: int) -> tuple[int, dict]:
    status, headers, _ = await conn.request("GET", f"/hang/{i}", timeout=HANG_TIMEOUT + 10)
    order.append((i, status))
    return status, headers


async def test_hung_upstream_ties_up_only_the_limit(
    start_proxy: Callable, capped_factory: Callable, upstreams: dict[str, UpstreamProcess]
) -> None:
    up = capped_factory(1, 1.0)
    healthy = upstreams["v1"].address

    def config(port: int, admin: int) -> str:
        return f"""listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
upstreams:
  hang: {{endpoints: ["127.0.0.1:{up.hang}"], max_requests: {LIMIT}}}
  ok: {{endpoints: ["{healthy}"]}}
routes:
  - name: hang
    match: [{{path: {{prefix: /hang}}}}]
    route: [{{destination: hang}}]
    timeout: {HANG_TIMEOUT}s
  - name: default
    route: [{{destination: ok}}]
"""

    proxy = start_proxy(config)
    conns = [await Conn.open(proxy.port) for _ in range(BURST)]
    order: list[tuple[int, int]] = []
    tasks = [asyncio.create_task(_hang_request(c, order, i)) for i, c in enumerate(conns)]
    try:
        # The excess answers while the admitted ones hang: wait for BURST - LIMIT answers.
        deadline = time.monotonic() + HANG_TIMEOUT + 10
        while len(order) < BURST - LIMIT and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        early = list(order)
        during = await up.stats()
        while during["hang"]["outstanding"] < LIMIT and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the admitted ones may still be on their way
            during = await up.stats()
        other = await fetch(proxy.port, "GET", "/elsewhere", timeout=HANG_TIMEOUT + 5)
        still_hanging = sum(1 for t in tasks if not t.done())
        results = await asyncio.wait_for(asyncio.gather(*tasks), HANG_TIMEOUT + 15)
    finally:
        for t in tasks:
            t.cancel()
        for c in conns:
            await c.close()
    after = await up.stats()
    print("hung upstream:", early, during["hang"], after["hang"], still_hanging)

    refused = [h for s, h in results if s == 503]
    timed_out = [h for s, h in results if s == 504]
    assert len(refused) == BURST - LIMIT and len(timed_out) == LIMIT, [s for s, _ in results]
    assert all(h.get("retry-after") for h in refused), refused
    assert all(h.get("x-canaryproxy-error") == "overloaded" for h in refused), refused
    assert all(h.get("x-canaryproxy-error") == "upstream_timeout" for h in timed_out), timed_out
    # Ordering: every 503 came back before any 504, and the 4 still hung at that point.
    assert len(early) == BURST - LIMIT and {s for _, s in early} == {503}, early
    assert [s for _, s in order[-LIMIT:]] == [504] * LIMIT, order
    assert during["hang"]["outstanding"] == LIMIT, during
    assert other[0] == 200, other
    assert still_hanging == LIMIT, "the healthy route was served only after the hang ended"
    # The hung upstream never saw more than the limit.
    assert after["hang"]["requests"] == LIMIT, after
    assert after["hang"]["conns_open_max"] <= LIMIT and after["hang"]["outstanding_max"] <= LIMIT
    assert proxy.alive()
    status, _, _ = await fetch(proxy.admin_port, "GET", "/api/v1/status", headers=admin_headers())
    assert status == 200


async def _closed_loop(port: int, until: float, out: dict[str, Any]) -> None:
    """One client: a request at a time on one keep-alive connection until `until`."""
    conn = await Conn.open(port)
    try:
        while time.monotonic() < until:
            try:
                status, headers, _ = await conn.request("GET", "/work", timeout=10)
            except (TimeoutError, OSError, ConnectionError) as exc:
                out["errors"].append(type(exc).__name__)
                await conn.close()
                conn = await Conn.open(port)
                continue
            out["statuses"][status] = out["statuses"].get(status, 0) + 1
            if status == 503:
                ok = headers.get("retry-after") and headers.get("x-canaryproxy-error") == (
                    "overloaded"
                )
                out["bad_503"] += 0 if ok else 1
                await asyncio.sleep(0.005)
            if not conn.reusable:
                await conn.close()
                conn = await Conn.open(port)
    finally:
        await conn.close()


async def test_capped_upstream_sees_at_most_the_limit(
    start_proxy: Callable, capped_factory: Callable
) -> None:
    up = capped_factory(LIMIT, 50.0)

    def config(port: int, admin: int) -> str:
        return f"""listen: 127.0.0.1:{port}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
upstreams:
  app: {{endpoints: ["127.0.0.1:{up.capped}"], max_requests: {LIMIT}}}
routes:
  - name: default
    route: [{{destination: app}}]
    timeout: 10s
"""

    proxy = start_proxy(config)
    before = (await up.stats())["capped"]
    out: dict[str, Any] = {"statuses": {}, "errors": [], "bad_503": 0}
    until = time.monotonic() + 2.0
    clients = [asyncio.create_task(_closed_loop(proxy.port, until, out)) for _ in range(4 * LIMIT)]
    admin = []
    for _ in range(4):
        await asyncio.sleep(0.4)
        s, _, _ = await fetch(proxy.admin_port, "GET", "/api/v1/status", headers=admin_headers())
        admin.append(s)
    await asyncio.wait_for(asyncio.gather(*clients), 30)
    after = (await up.stats())["capped"]
    print("capped upstream:", out["statuses"], out["errors"][:5], after, admin)

    assert not out["errors"], out["errors"][:10]
    assert set(out["statuses"]) <= {200, 503}, out["statuses"]
    assert out["statuses"].get(503, 0) > 0, "more clients than the limit, yet nothing refused"
    assert out["bad_503"] == 0, "a 503 without Retry-After / overloaded"
    assert out["statuses"].get(200, 0) >= LIMIT, out["statuses"]
    assert after["requests"] - before["requests"] == out["statuses"].get(200, 0)
    assert after["outstanding_max"] <= LIMIT, after
    assert admin == [200] * 4, admin
    assert proxy.alive()
