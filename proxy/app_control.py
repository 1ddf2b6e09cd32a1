"""The App methods behind /api/v1 (weights, switch, undo, ...) and the canary manager.

A mixin of App, kept apart so wiring and control read separately. Every mutation goes
through `App._apply`, which builds the table aside and swaps it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from proxy.admin import BadInput, NotFound, explain_args, readiness
from proxy.config.schema import Config, MatchRule, Route
from proxy.dataplane.upstream import Pools
from proxy.metrics import ProxyMetrics, VersionSnapshot
from proxy.routing.split import weights_from_percent
from proxy.routing.table import RoutingTable
from proxy.state import RoutingState, StateStore, file_weights, match_from_json

log = logging.getLogger("canaryproxy")


def check_admin(config: Config, token: str | None) -> None:
    """Refuse an admin API reachable from other hosts without a token."""
    from proxy.net import StartupError, is_loopback, split_listen

    host, _ = split_listen(config.admin.listen)
    if not is_loopback(host) and not token:
        raise StartupError(
            f"refusing to start: admin.listen {config.admin.listen} is not a loopback "
            f"address and ${config.admin.token_env} is not set; set a token or bind "
            "admin to 127.0.0.1",
            code=2,
        )


def warn_restart_only(old: Config, new: Config) -> None:
    """A reload cannot rebind sockets or resize limits: say so for each such change."""
    for what, before, after in [
        ("listen", old.listen, new.listen),
        ("admin.listen", old.admin.listen, new.admin.listen),
        ("access_log", old.access_log, new.access_log),
        ("metrics.compat", old.metrics.compat, new.metrics.compat),
        ("limits", old.limits, new.limits),
    ]:
        if before != after:
            log.warning("%s changed; that takes effect at the next restart", what)


class AdminControl:
    """What the admin API calls; the attributes are App's."""

    config: Config | None
    config_path: str
    table: RoutingTable | None
    routing: RoutingState
    store: StateStore
    metrics: ProxyMetrics
    pools: Pools
    canaries: Any
    workers: Any
    health: Any
    last_reload_error: str | None

    def _apply(self, routing: RoutingState, cause: str, quiet_if_same: bool = False) -> dict:
        raise NotImplementedError

    async def persisted(self) -> None:
        """Wait until every state change made so far is on disk."""
        await asyncio.wrap_future(self.store.flush())

    def token_for(self, config: Config) -> str:
        return os.environ.get(config.admin.token_env, "")

    def token(self) -> str:
        return self.token_for(self.config) if self.config is not None else ""

    def _route_subsets(self, route: str) -> list[str]:
        assert self.config is not None
        r = self.config.route(route)
        if r is None:
            names = ", ".join(x.name for x in self.config.routes)
            raise NotFound(f"unknown route {route!r}; routes: {names}")
        return [d.subset for d in r.destinations]

    def series(self) -> dict:
        """The last 15 minutes of per-version rps, error % and P99 (the dashboard's charts)."""
        return self.metrics.series()

    def set_weights(self, route: str, weights: dict[str, float]) -> dict:
        """Weights in percent (SPEC §1): names left out share what is left."""
        assert self.table is not None
        known = self._route_subsets(route)
        current = self.table.weights().get(route, {})
        try:
            full = weights_from_percent({s: current.get(s, 0.0) for s in known}, weights)
        except ValueError as exc:
            raise BadInput(f"route {route!r}: {exc}") from None
        return self._set_route(route, full, "weights", keep_match=True)

    def switch(self, route: str, subset: str) -> dict:
        known = self._route_subsets(route)
        if subset not in known:
            raise BadInput(f"route {route!r} has no subset {subset!r}; known: {known}")
        full = {s: 100.0 if s == subset else 0.0 for s in known}
        return self._set_route(route, full, "switch", keep_match=False)

    def _set_route(
        self, route: str, weights: dict[str, float], cause: str, keep_match: bool
    ) -> dict:
        assert self.config is not None and self.table is not None
        match = dict(self.routing.canary_match)
        if not keep_match:
            match.pop(route, None)
        new = RoutingState(
            {**self.routing.weights, route: weights}, match, file_weights(self.config)
        )
        rev = self._apply(new, cause)
        log.info("%s: route %s weights %s (revision %d)", cause, route, weights, rev["revision"])
        return {"revision": rev["revision"], "route": route, "weights": rev["weights"][route]}

    def history(self) -> list[dict]:
        return self.store.history()

    def undo(self, to_revision: int | None) -> dict:
        assert self.config is not None
        target = to_revision if to_revision is not None else self.store.head() - 1
        rev = self.store.get(target)
        if rev is None:
            raise BadInput(f"no revision {target}; history has 1..{self.store.head()}")
        files = file_weights(self.config)
        weights: dict[str, dict[str, float]] = {}
        for route, w in rev["weights"].items():
            if route in files and w != files[route]:
                known = self._route_subsets(route)
                if set(w) - set(known):
                    raise BadInput(f"revision {target} routes {route!r} to a subset now gone")
                weights[route] = {s: float(w.get(s, 0.0)) for s in known}
        match = match_from_json(rev["canary_match"])
        new = self._apply(RoutingState(weights, match, files), "undo")
        return {"revision": new["revision"], "restored": target, "weights": new["weights"]}

    async def canary_action(self, name: str, verb: str) -> dict:
        assert self.config is not None
        if self.canaries is None or all(c.name != name for c in self.config.canaries):
            raise NotFound(f"unknown canary {name!r}")
        ok, message = await self.canaries.action(name, verb)
        if not ok:
            raise BadInput(message)
        return {"canary": name, "action": verb, "message": message}

    def explain(self, req: dict) -> dict:
        assert self.table is not None
        return self.table.explain(*explain_args(req))

    def ready(self) -> tuple[bool, str]:
        if self.table is None:
            return False, "no config loaded"
        if self.workers is not None and self.workers.alive() == 0:
            return False, "no worker process is running"
        health = self.health
        passed = frozenset(health.passed)
        return readiness(self.table.weights(), self.upstream_status(), health.probed(), passed)

    def status(self) -> dict:
        assert self.config is not None and self.table is not None
        weights = self.table.weights()
        return {
            "revision": self.store.head(),
            "config_file": self.config_path,
            "state_dir": self.store.dir,
            "last_reload_error": self.last_reload_error,
            "routes": [self._route_status(r, weights.get(r.name, {})) for r in self.config.routes],
            "upstreams": [
                {"name": u["name"], "endpoints": u["endpoints"]} for u in self.upstream_status()
            ],
            "canaries": self.canaries.status() if self.canaries is not None else [],
            **({"workers": self.workers.status()} if self.workers is not None else {}),
            # asyncio tasks of this process (a leak shows as a count that keeps growing)
            "tasks": len(asyncio.all_tasks()),
        }

    def upstream_status(self) -> list[dict]:
        """Pools as the data plane sees them; with workers, `ejected` by any of them."""
        pools = self.pools.status()
        if self.workers is None:
            return pools
        ejected = self.workers.ejected()
        for u in pools:
            for e in u["endpoints"]:
                e["ejected"] = (u["name"], e["address"]) in ejected
        return pools

    def _route_status(self, r: Route, weights: dict[str, float]) -> dict:
        match = self.routing.canary_match.get(r.name)
        return {
            "name": r.name,
            "service": r.service or r.name,
            "weights": weights,
            "live": [s for s, w in weights.items() if w > 0],
            "idle": [s for s, w in weights.items() if w <= 0],
            "preview": {"header": r.preview.header, "value": r.preview.value}
            if r.preview
            else None,
            "override": r.name in self.routing.weights,
            "file_weights": {d.subset: float(d.weight) for d in r.destinations},
            "canary_match": match[0] if match else None,
            "versions": {s: self.metrics.version_rates(r.name, s) for s in weights},
        }


class CanaryHostControl:
    """What the canary manager calls (proxy.canary.runner's host); the attributes are App's."""

    config: Config | None
    routing: RoutingState
    store: StateStore
    metrics: ProxyMetrics

    def _apply(self, routing: RoutingState, cause: str, quiet_if_same: bool = False) -> dict:
        raise NotImplementedError

    def current_config(self) -> Config:
        assert self.config is not None
        return self.config

    def snapshot(self, route: str, version: str) -> VersionSnapshot:
        return self.metrics.snapshot(route, version)

    def apply_canary(
        self,
        canary: str,
        route: str,
        weights: dict[str, float] | None,
        match: tuple[str, tuple[MatchRule, ...]] | None,
        cause: str,
    ) -> None:
        assert self.config is not None
        new_weights = dict(self.routing.weights)
        if weights is not None:
            new_weights[route] = dict(weights)
        new_match = dict(self.routing.canary_match)
        if match is None:
            new_match.pop(route, None)
        else:
            new_match[route] = match
        new = RoutingState(new_weights, new_match, file_weights(self.config))
        self._apply(new, cause, quiet_if_same=True)

    def save_canary_state(self, name: str, state: dict) -> None:
        self.store.save_canary_state(name, state)

    def load_canary_state(self, name: str) -> dict | None:
        return self.store.load_canary_state(name)
