"""Per-subset keep-alive pools: round-robin, passive health, connection and request limits.

One `UpstreamPool` per Subset (config `Upstream`). A request `acquire`s a connection through
a callback (no task per request: an idle connection is handed over synchronously; only a new
connection costs a task), writes to it, and the connection returns itself to the pool once its
response was read to the end without any protocol error. Anything else closes it.

Passive health: EJECT_AFTER consecutive gateway failures eject an endpoint for a back-off
(never the last one left); a refused connect (nothing listens there) ejects it at once, the
last one too, until a probe connects (PROBE_FIRST s later, then doubling to PROBE_MAX) or an
active health check turns it healthy again.

An upstream with `tls` is reached over HTTPS with the pool's one SSLContext
(`dataplane.upstream_tls`); its connections are pooled like plain ones. A failed handshake is
`upstream_tls`: a gateway failure of that endpoint, never a refusal.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from proxy.config.schema import Config, Upstream
from proxy.dataplane.rules import CONNECT_REFUSED, NO_HEALTHY
from proxy.dataplane.upconn import Endpoint, UpstreamConnection
from proxy.dataplane.upstream_tls import UPSTREAM_TLS, context_for, server_name, tls_failed
from proxy.tasks import spawn

log = logging.getLogger(__name__)

EJECT_AFTER: Final = 5  # consecutive gateway failures
EJECT_BASE: Final = 30.0
EJECT_MAX: Final = 300.0
PROBE_FIRST: Final = 0.5  # s from a refused connect to the first probe of that endpoint
PROBE_MAX: Final = 5.0

# Failure reasons handed to an acquire callback (NO_HEALTHY and CONNECT_REFUSED: from rules,
# which decides what may fail over).
OVERLOADED: Final = "overloaded"
CONNECT_TIMEOUT: Final = "upstream_connect_timeout"
__all__ = ["CONNECT_REFUSED", "CONNECT_TIMEOUT", "NO_HEALTHY", "OVERLOADED", "UPSTREAM_TLS"]

AcquireCallback = Callable[["UpstreamConnection | None", "Endpoint | None", str], None]


class Metrics(Protocol):
    def upstream_error(self, version: str, reason: str) -> None: ...


class UpstreamPool:
    """Connections to one Subset's endpoints."""

    def __init__(self, upstream: Upstream, healthy: dict[str, bool] | None = None) -> None:
        self.upstream = upstream
        self.name = upstream.name
        start = healthy or {}
        self.endpoints = [Endpoint(a, start.get(a, True)) for a in upstream.endpoints]
        self.ssl = context_for(upstream)  # once per pool: every connection reuses it
        self._rr = 0
        self.connections = 0  # connecting + active + idle
        self.in_flight = 0  # requests holding a slot
        self._pending: deque[tuple[AcquireCallback, Endpoint, asyncio.TimerHandle]] = deque()
        self.draining = False
        self._loop_: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._probes: set[asyncio.Task] = set()

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        # Bound on first use: a pool may be built before the event loop runs.
        if self._loop_ is None:
            self._loop_ = asyncio.get_running_loop()
        return self._loop_

    # --- choosing an endpoint -------------------------------------------------------------
    def _pick(self, exclude: Endpoint | None, now: float) -> Endpoint | None:
        eps = self.endpoints
        n = len(eps)
        fallback = None
        for i in range(n):
            ep = eps[(self._rr + i) % n]
            if not ep.healthy or ep.ejected_until > now:  # inlined Endpoint.ejected
                continue
            if ep is exclude and n > 1:
                fallback = ep
                continue
            self._rr = (self._rr + i + 1) % n
            return ep
        return fallback

    def usable(self) -> bool:
        """Some endpoint may be picked now (healthy and not ejected): a failover target."""
        now = self._loop.time()
        return any(ep.healthy and ep.ejected_until <= now for ep in self.endpoints)

    # --- acquire / release ------------------------------------------------------------------
    def acquire(
        self, cb: AcquireCallback, exclude: Endpoint | None = None, fresh: bool = False
    ) -> None:
        """Call `cb(conn, endpoint, "")` with a ready connection, or `cb(None, ep, reason)`.

        `exclude`: an endpoint to avoid when another is eligible (retries); `fresh`: open a new
        connection instead of reusing an idle one.
        """
        if self.in_flight >= self.upstream.max_requests:
            cb(None, None, OVERLOADED)
            return
        now = (self._loop_ or self._loop).time()
        ep = self._pick(exclude, now)
        if ep is None:
            cb(None, None, NO_HEALTHY)
            return
        self.in_flight += 1
        self._give(ep, cb, fresh, now)

    def take_idle(self, exclude: Endpoint | None = None) -> UpstreamConnection | None:
        """`acquire`'s common case as a plain call: a usable idle connection of the next
        endpoint, its slot taken; None when the request must go through `acquire` (a
        limit, no endpoint, nothing idle there), and then nothing changed but unusable
        idle connections closed."""
        if self.in_flight >= self.upstream.max_requests:
            return None
        now = (self._loop_ or self._loop).time()
        rr = self._rr
        ep = self._pick(exclude, now)
        if ep is None:
            return None
        conn = self._idle(ep, now)
        if conn is None:
            self._rr = rr  # `acquire` picks this endpoint again
            return None
        self.in_flight += 1
        return conn

    def _idle(self, ep: Endpoint, now: float) -> UpstreamConnection | None:
        """A usable idle connection of `ep`, made active; the stale ones met are closed."""
        while ep.idle:
            conn = ep.idle.pop()
            if conn.usable(now, self.upstream.idle_timeout):
                ep.active += 1
                return conn
            conn.close()
        return None

    def _give(
        self, ep: Endpoint, cb: AcquireCallback, fresh: bool = False, now: float = 0.0
    ) -> None:
        now = now or self._loop.time()
        conn = None if fresh else self._idle(ep, now)
        if conn is not None:
            cb(conn, ep, "")
            return
        if self.connections >= self.upstream.max_connections:
            self._queue(cb, ep)
            return
        self._connect(ep, cb)

    def _queue(self, cb: AcquireCallback, ep: Endpoint) -> None:
        if len(self._pending) >= self.upstream.max_pending:
            self.in_flight -= 1
            cb(None, ep, OVERLOADED)
            return
        entry: list = []
        timer = self._loop.call_later(self.upstream.queue_timeout, self._queue_timeout, entry)
        item = (cb, ep, timer)
        entry.append(item)
        self._pending.append(item)

    def _queue_timeout(self, entry: list) -> None:
        try:
            self._pending.remove(entry[0])
        except ValueError:
            return
        self.in_flight -= 1
        entry[0][0](None, entry[0][1], OVERLOADED)

    def _serve_pending(self) -> None:
        while self._pending and self.connections < self.upstream.max_connections:
            cb, ep, timer = self._pending.popleft()
            timer.cancel()
            self._give(ep, cb)
        while self._pending:
            cb, ep, timer = self._pending[0]
            if not ep.idle:
                return
            self._pending.popleft()
            timer.cancel()
            self._give(ep, cb)

    def _connect(self, ep: Endpoint, cb: AcquireCallback) -> None:
        self.connections += 1
        ep.active += 1
        task = spawn(self._open(ep, cb), f"connect {ep.address}", self._tasks)
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        _quiet(task)

    async def _open(self, ep: Endpoint, cb: AcquireCallback) -> None:
        loop = self._loop
        tls, name = self.ssl, None
        if self.upstream.tls is not None:
            name = server_name(self.upstream.tls, ep.host)

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, ep)

        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(factory, ep.host, ep.port, ssl=tls, server_hostname=name),
                self.upstream.connect_timeout,
            )
        except (TimeoutError, OSError) as exc:
            self.connections -= 1
            ep.active -= 1
            self.in_flight -= 1
            reason = CONNECT_TIMEOUT if isinstance(exc, asyncio.TimeoutError) else CONNECT_REFUSED
            if tls and tls_failed(exc):
                reason = UPSTREAM_TLS
                self.report(ep, False)  # a gateway failure, not a refusal: no instant ejection
            self._serve_pending()
            cb(None, ep, reason)
            return
        cb(conn, ep, "")

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The request is done with `conn`; keep it idle only if `reusable`."""
        ep = conn.endpoint
        ep.active -= 1
        self.in_flight -= 1
        if reusable and not self.draining and not conn.closed:
            conn.idle_since = conn.loop.time()
            ep.idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(self._sweep_every(), self._sweep)
        else:
            conn.pool_owned = False
            conn.close()
        if self._pending:
            self._serve_pending()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): drop it from the counts."""
        self.connections -= 1
        try:
            conn.endpoint.idle.remove(conn)
        except ValueError:
            pass
        self._serve_pending()

    def cancel(self) -> None:
        """Give back a slot for a request that got no connection (e.g. it was abandoned)."""
        self.in_flight -= 1

    # --- passive health ---------------------------------------------------------------------
    def report(self, ep: Endpoint, ok: bool) -> None:
        """Count a gateway failure (connect fail/reset/502-504 made by us) or a success."""
        if ok:
            ep.failures = 0
            return
        ep.failures += 1
        if ep.failures < EJECT_AFTER:
            return
        now = self._loop.time()
        others = [e for e in self.endpoints if e is not ep and e.healthy and not e.ejected(now)]
        if not others:
            return  # never eject the last endpoint left
        ep.ejected_until = now + min(EJECT_BASE * (2**ep.ejections), EJECT_MAX)
        ep.ejections += 1
        ep.failures = 0
        log.warning("ejected %s of %s until +%.0fs", ep.address, self.name, ep.ejected_until - now)

    def refused(self, ep: Endpoint) -> None:
        """A refused connect: nothing listens at `ep`. It is ejected at once, the last
        endpoint too (its requests fail over, or get a fast 503), until a probe connects."""
        if ep.ejected_until == math.inf or self.draining:
            return
        ep.ejected_until = math.inf
        ep.failures = 0
        log.warning("ejected %s of %s: connection refused; probing it", ep.address, self.name)
        spawn(self._probe(ep), f"probe {ep.address}", self._probes)

    async def _probe(self, ep: Endpoint) -> None:
        """Connect to a refused endpoint with a growing pause until it accepts."""
        delay = PROBE_FIRST
        while ep.ejected_until == math.inf and not self.draining:
            await asyncio.sleep(delay)
            try:
                transport, _ = await asyncio.wait_for(
                    self._loop.create_connection(asyncio.Protocol, ep.host, ep.port),
                    self.upstream.connect_timeout,
                )
            except (TimeoutError, OSError):
                delay = min(delay * 2, PROBE_MAX)
                continue
            transport.close()
            if ep.ejected_until == math.inf:
                ep.ejected_until = 0.0
                log.warning("%s of %s accepts connections again", ep.address, self.name)

    # --- maintenance ------------------------------------------------------------------------
    def _sweep_every(self) -> float:
        return max(0.05, min(self.upstream.idle_timeout / 2, 5.0))

    def _sweep(self) -> None:
        """Close idle connections older than idle_timeout; re-arm while any are idle."""
        self._sweeper = None
        now = self._loop.time()
        idle = 0
        for ep in self.endpoints:
            for conn in [c for c in ep.idle if not c.usable(now, self.upstream.idle_timeout)]:
                ep.idle.remove(conn)
                conn.close()
            idle += len(ep.idle)
        if idle:
            self._sweeper = self._loop.call_later(self._sweep_every(), self._sweep)

    def drain(self) -> None:
        """Stop reusing connections: idle ones close now, active ones after their response."""
        self.draining = True
        for ep in self.endpoints:
            while ep.idle:
                ep.idle.pop().close()

    def close(self) -> None:
        self.drain()
        for task in list(self._probes):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._pending:
            cb, ep, timer = self._pending.popleft()
            timer.cancel()
            self.in_flight -= 1
            cb(None, ep, OVERLOADED)

    def status(self) -> dict:
        now = self._loop_.time() if self._loop_ is not None else 0.0
        eps = [
            {
                "address": e.address,
                "healthy": e.healthy,
                "ejected": e.ejected(now),
                "active": e.active,
                "idle": len(e.idle),
            }
            for e in self.endpoints
        ]
        return {
            "name": self.name,
            "endpoints": eps,
            "in_flight": self.in_flight,
            "connections": self.connections,
            "pending": len(self._pending),
        }


def _quiet(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upstream connect task failed", exc_info=task.exception())


class Pools:
    """All Subsets' pools; `update` on reload keeps unchanged pools and drains removed ones."""

    def __init__(self, config: Config) -> None:
        self._pools: dict[str, UpstreamPool] = {u.name: UpstreamPool(u) for u in config.upstreams}
        self._old: list[UpstreamPool] = []

    def pool(self, subset: str) -> UpstreamPool | None:
        return self._pools.get(subset)

    def update(self, config: Config) -> None:
        new: dict[str, UpstreamPool] = {}
        for u in config.upstreams:
            old = self._pools.get(u.name)
            if old is not None and old.upstream == u:
                new[u.name] = old
                continue
            new[u.name] = UpstreamPool(u, self._start_health(old, u))
        for name, old in self._pools.items():
            if new.get(name) is not old:
                old.drain()
                self._old.append(old)
        self._pools = new
        self._old = [p for p in self._old if p.connections > 0]

    @staticmethod
    def _start_health(old: UpstreamPool | None, u: Upstream) -> dict[str, bool]:
        """Known endpoints keep their health; added ones with a health check wait for it."""
        known = {e.address: e.healthy for e in old.endpoints} if old else {}
        if u.health_check is None:
            return known
        return {a: known.get(a, False) for a in u.endpoints}

    def set_health(self, subset: str, address: str, healthy: bool) -> None:
        pool = self._pools.get(subset)
        if pool is None:
            return
        for ep in pool.endpoints:
            if ep.address == address:
                if healthy and not ep.healthy and ep.ejected_until == math.inf:
                    ep.ejected_until = 0.0  # an active check passed: a refusal is over
                ep.healthy = healthy

    def status(self) -> list[dict]:
        return [p.status() for p in self._pools.values()]

    def close(self) -> None:
        for p in [*self._pools.values(), *self._old]:
            p.close()
        self._old = []
