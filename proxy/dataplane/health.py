"""Active health checks: GET `health_check.path` on every endpoint of a Subset.

An endpoint turns unhealthy after `unhealthy` consecutive failures and healthy again
after `healthy` consecutive passes (Envoy's unhealthy/healthy thresholds). A pass is a
2xx answer within `timeout`. Only transitions are reported, through `on_change`, so
the pools and the health gauge see each change once. On reload only upstreams whose
endpoints or check settings changed get new probes; the others keep their counters.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import aiohttp

from proxy.config.schema import Config, HealthCheck, Upstream
from proxy.dataplane.upstream_tls import context_for
from proxy.tasks import spawn

log = logging.getLogger(__name__)
OnChange = Callable[[str, str, bool], None]  # (subset, address, healthy)


def next_health(
    healthy: bool, passes: int, fails: int, ok: bool, check: HealthCheck
) -> tuple[bool, int, int]:
    """(healthy, consecutive passes, consecutive failures) after one probe result."""
    passes, fails = (passes + 1, 0) if ok else (0, fails + 1)
    if healthy and fails >= check.unhealthy:
        return False, passes, fails
    if not healthy and passes >= check.healthy:
        return True, passes, fails
    return healthy, passes, fails


class HealthChecker:
    """One probe task per endpoint of every Subset that has a `health_check`."""

    def __init__(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._tasks: dict[str, tuple[Upstream, list[asyncio.Task]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.passed: set[tuple[str, str]] = set()  # (subset, address) with a passing probe

    def probed(self) -> frozenset[str]:
        """Subsets whose endpoints are checked (readiness waits for their first pass)."""
        return frozenset(self._tasks)

    def update(self, config: Config, initially_healthy: Callable[[str, str], bool]) -> None:
        """Start, keep or restart probes to match `config`."""
        wanted = {u.name: u for u in config.upstreams if u.health_check is not None}
        for name in list(self._tasks):
            if wanted.get(name) != self._tasks[name][0]:
                self._cancel(name)
        for name, u in wanted.items():
            if name not in self._tasks:
                ctx = context_for(u, warn=False)  # HTTPS upstreams: one context for all probes
                tasks = [self._spawn(u, a, initially_healthy(name, a), ctx) for a in u.endpoints]
                self._tasks[name] = (u, tasks)

    def _spawn(
        self, u: Upstream, address: str, healthy: bool, ctx: ssl.SSLContext | None
    ) -> asyncio.Task:
        return spawn(self._probe_loop(u, address, healthy, ctx), f"health {u.name} {address}")

    def _cancel(self, name: str) -> None:
        for t in self._tasks.pop(name)[1]:
            t.cancel()
        self.passed = {k for k in self.passed if k[0] != name}

    async def stop(self) -> None:
        tasks = [t for _, ts in self._tasks.values() for t in ts]
        for name in list(self._tasks):
            self._cancel(name)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _probe_loop(
        self, u: Upstream, address: str, healthy: bool, ctx: ssl.SSLContext | None
    ) -> None:
        check = u.health_check
        assert check is not None
        sni = u.tls.sni if u.tls is not None and u.tls.sni else None
        passes = fails = 0
        while True:
            ok = await self.probe(address, check, ctx, sni)
            if ok:
                self.passed.add((u.name, address))
            was = healthy
            healthy, passes, fails = next_health(healthy, passes, fails, ok, check)
            if healthy != was:
                log.warning(
                    "%s %s is now %s", u.name, address, "healthy" if healthy else "unhealthy"
                )
                self._on_change(u.name, address, healthy)
            await asyncio.sleep(check.interval)

    async def probe(
        self,
        address: str,
        check: HealthCheck,
        ctx: ssl.SSLContext | None = None,
        sni: str | None = None,
    ) -> bool:
        """One GET of the check's path; over HTTPS with `ctx` (and `sni`) when given."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False
            )
        url = f"{'https' if ctx else 'http'}://{address}{check.path}"
        tls: dict = {"ssl": ctx, "server_hostname": sni} if ctx else {}
        try:
            timeout = aiohttp.ClientTimeout(total=check.timeout)
            get = self._session.get(url, timeout=timeout, allow_redirects=False, **tls)
            async with get as resp:
                await resp.read()
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
