"""The one place where changes meet traffic.

`Control` holds the running config, the routing state (weights and canary matches set
through the API or a canary), the routing table built from both, and the build cache.
Every change goes through it and ends in `_swap`, the one assignment of `table`:

    reload (config.reload)      -> prepare (compile aside) -> commit -> _swap
    PUT weights, switch, undo   -> apply -> _swap
    a canary step (canary.runner) -> apply_canary -> apply -> _swap
    an active health change     -> publish (workers rebuild from worker_state)

A build that fails raises before `_swap`, so the running table is untouched. Swaps are
synchronous on the event loop: they never interleave, and each builds from the routing
state current at its moment. The data plane reads `table` once per request, so requests
in flight finish on the table they started with. Workers of `serve --workers N` get every
swap through `publish` and rebuild from `worker_state`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy import status as views
from proxy.admin import BadInput, NotFound, explain_args, readiness
from proxy.config.schema import Config, MatchRule
from proxy.routing.split import format_weights, weights_from_percent
from proxy.routing.table import (
    BuildCache,
    Overrides,
    RoutingTable,
    build_table,
    iter_build_table,
    retire,
)
from proxy.state import (
    RoutingState,
    file_weights,
    match_from_json,
    reconcile,
    with_canary_route,
)
from proxy.tasks import SLICE, run_sliced

log = logging.getLogger("canaryproxy")

Health = tuple[tuple[str, str, bool], ...]  # (upstream, address, healthy) for the workers


async def build_table_stepwise(
    config: Config, overrides: Overrides, cache: BuildCache, slice_s: float = SLICE
) -> RoutingTable:
    """`build_table` that hands the loop back every `slice_s` seconds of work (a cold
    1,000-route build takes a few hundred ms). Raises ValueError like build_table."""
    return await run_sliced(iter_build_table(config, overrides, cache), slice_s)


@dataclass(frozen=True)
class Prepared:
    """A reload's routes compiled aside, for `commit`: the table built from `basis` (the
    routing state then) and the cache fork that holds its compiled routes."""

    basis: RoutingState
    routing: RoutingState
    table: RoutingTable
    cache: BuildCache


def warn_restart_only(old: Config, new: Config) -> None:
    """A reload cannot rebind sockets or resize limits: say so for each such change (a
    listener added, removed, renamed or moved included: connections keep the listeners they
    were accepted on until the restart)."""
    listeners = "listeners" if old.listeners or new.listeners else "listen"
    for what, before, after in [
        (listeners, old.all_listeners(), new.all_listeners()),
        ("admin.listen", old.admin.listen, new.admin.listen),
        ("access_log", old.access_log, new.access_log),
        ("metrics.compat", old.metrics.compat, new.metrics.compat),
        ("limits", old.limits, new.limits),
    ]:
        if before != after:
            log.warning("%s changed; that takes effect at the next restart", what)


class Control:
    """Config, routing state, table and build cache, and every change to them."""

    def __init__(self, parts: Any, publish: Callable[[], None]) -> None:
        """`parts` (the App) lends the store, metrics, pools, health, the reloader and,
        once started, the canary manager and the workers; `publish` tells the workers."""
        self.parts = parts
        self.store, self.metrics, self.pools = parts.store, parts.metrics, parts.pools
        self.publish = publish
        self.config: Config | None = None
        self.routing = RoutingState()
        self.table: RoutingTable | None = None
        self.cache = BuildCache()  # compiled routes of the running table, reused by builds
        self.on_config: list[Callable[[Config], None]] = []  # after each reload's commit
        self.fleet: Any = None  # proxy.fleet.Fleet in fleet mode (--store)

    # -- the swap --------------------------------------------------------------------

    def _swap(self, routing: RoutingState, table: RoutingTable) -> None:
        retire(self.table, table)
        self.routing, self.table = routing, table
        self.publish()

    def commit(self, config: Config, prepared: Prepared | None = None) -> None:
        """Make `config` the running one; raises ValueError (nothing changed) when its
        table cannot be built. `prepared` (from `prepare`) is used when the routing
        state has not changed since; otherwise its compiled routes are."""
        if self.config is not None:
            warn_restart_only(self.config, config)
        loaded = self.routing if self.config is not None else self.store.load_routing()
        if prepared is not None and prepared.basis is loaded:
            routing, table, self.cache = prepared.routing, prepared.table, prepared.cache
        else:
            if prepared is not None:
                self.cache = prepared.cache
            routing = reconcile(loaded, config)
            overrides = Overrides(routing.weights, routing.canary_match)
            table = build_table(config, overrides, self.cache)
        shown = self.table.weights() if self.table is not None else {}
        self.config = config
        self._swap(routing, table)
        self.pools.update(config)
        self.parts.health.update(config, self._initially_healthy)
        self.metrics.update_route_weights(shown, table.weights())
        self.store.save_routing(routing)

    async def prepare(self, config: Config) -> Prepared:
        """Compile a reload's routes into a fork of the cache, yielding the loop between
        slices; the running table and cache serve on meanwhile. Raises ValueError."""
        fork = self.cache.fork()
        basis = self.routing
        routing = reconcile(basis, config)
        overrides = Overrides(routing.weights, routing.canary_match)
        table = await build_table_stepwise(config, overrides, fork)
        return Prepared(basis, routing, table, fork)

    def reloaded(self, config: Config, prepared: Prepared | None) -> int:
        """The reloader's commit: swap, record the revision, tell the listeners."""
        self.commit(config, prepared)
        revision = int(self.record("reload")["revision"])
        for listener in self.on_config:
            listener(config)
        return revision

    def apply(self, routing: RoutingState, cause: str, quiet_if_same: bool = False) -> dict:
        """Build a table for `routing`; on success swap it in and record a revision.

        `quiet_if_same`: when the effective routing did not change, record no revision
        (a canary re-asserting its weights each phase is not a change of routing state).
        """
        assert self.config is not None and self.table is not None
        try:
            overrides = Overrides(routing.weights, routing.canary_match)
            table = build_table(self.config, overrides, self.cache)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        old = self.table.weights()
        same = (table.weights(), routing.canary_match) == (old, self.routing.canary_match)
        self._swap(routing, table)
        if quiet_if_same and same:
            self.store.save_routing(routing)
            return self.store.get(self.store.head()) or {}
        self.metrics.update_route_weights(old, table.weights())
        self.store.save_routing(routing)
        return self.record(cause)

    def record(self, cause: str) -> dict:
        assert self.table is not None
        return self.store.record(cause, self.table.weights(), self.routing.canary_match)

    def differs_from_head(self) -> bool:
        head = self.store.get(self.store.head())
        if head is None or self.table is None:
            return True
        same_match = match_from_json(head["canary_match"]) == self.routing.canary_match
        return head["weights"] != self.table.weights() or not same_match

    def say_overrides(self) -> None:
        """Weights from the state dir that win over the file's: say so at startup."""
        for route, w in self.routing.weights.items():
            shown = self.routing.seen_file.get(route)
            if shown is not None and w != shown:
                log.warning(
                    "route %s: weights %s from the state dir %s override the file's %s "
                    "(set through the API or a canary; `canaryproxy undo` or a change of the "
                    "route's weights in the file ends the override)",
                    route, format_weights(w), self.store.dir, format_weights(shown),
                )  # fmt: skip

    def _initially_healthy(self, subset: str, address: str) -> bool:
        pool = self.pools.pool(subset)
        for ep in pool.endpoints if pool else ():
            if ep.address == address:
                return bool(ep.healthy)
        return True

    def worker_state(self) -> tuple[Config, Overrides, Health]:
        """What a worker routes with (proxy.workers.supervisor sends it on `publish`)."""
        assert self.config is not None
        health = tuple(
            (u["name"], e["address"], bool(e["healthy"]))
            for u in self.pools.status()
            for e in u["endpoints"]
        )
        return self.config, Overrides(self.routing.weights, self.routing.canary_match), health

    # -- the admin API's changes -----------------------------------------------------

    def _route_subsets(self, route: str) -> list[str]:
        assert self.config is not None
        r = self.config.route(route)
        if r is None:
            names = ", ".join(x.name for x in self.config.routes)
            raise NotFound(f"unknown route {route!r}; routes: {names}")
        return [d.subset for d in r.destinations]

    async def set_weights(self, route: str, weights: dict[str, float]) -> dict:
        """Weights in percent (SPEC §1): names left out share what is left."""
        assert self.table is not None
        known = self._route_subsets(route)
        current = self.table.weights().get(route, {})
        try:
            full = weights_from_percent({s: current.get(s, 0.0) for s in known}, weights)
        except ValueError as exc:
            raise BadInput(f"route {route!r}: {exc}") from None
        return await self._set_route(route, full, "weights", keep_match=True)

    async def switch(self, route: str, subset: str) -> dict:
        known = self._route_subsets(route)
        if subset not in known:
            raise BadInput(f"route {route!r} has no subset {subset!r}; known: {known}")
        full = {s: 100.0 if s == subset else 0.0 for s in known}
        return await self._set_route(route, full, "switch", keep_match=False)

    async def _set_route(
        self, route: str, weights: dict[str, float], cause: str, keep_match: bool
    ) -> dict:
        assert self.config is not None
        config = self.config

        def build(routing: RoutingState) -> RoutingState:
            match = dict(routing.canary_match)
            if not keep_match:
                match.pop(route, None)
            return RoutingState({**routing.weights, route: weights}, match, file_weights(config))

        rev = await self._change(build, cause)
        log.info("%s: route %s weights %s (revision %d)", cause, route, weights, rev["revision"])
        return {"revision": rev["revision"], "route": route, "weights": rev["weights"][route]}

    async def undo(self, to_revision: int | None) -> dict:
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
        new = await self._change(lambda _: RoutingState(weights, match, files), "undo")
        return {"revision": new["revision"], "restored": target, "weights": new["weights"]}

    async def _change(self, build: Callable[[RoutingState], RoutingState], cause: str) -> dict:
        """A change of routing state: here (one machine), or one store transaction that
        every replica applies (fleet mode: proxy.fleet)."""
        if self.fleet is None:
            return self.apply(build(self.routing), cause)
        return dict(await self.fleet.change(build, cause))

    def check(self, routing: RoutingState) -> RoutingTable:
        """The table `routing` would give (BadInput when it cannot be built); nothing swaps."""
        assert self.config is not None
        try:
            overrides = Overrides(routing.weights, routing.canary_match)
            return build_table(self.config, overrides, self.cache)
        except ValueError as exc:
            raise BadInput(str(exc)) from None

    def from_store(self, config: Config | None, routing: RoutingState) -> None:
        """Fleet mode: the store's routing state (and config) as one replica applies it,
        in one swap; the store holds the revision log. Raises ValueError (nothing swaps)."""
        changed = config is not None and config is not self.config
        config = config or self.config
        assert config is not None
        routing = reconcile(routing, config)
        table = build_table(config, Overrides(routing.weights, routing.canary_match), self.cache)
        shown = self.table.weights() if self.table is not None else {}
        if changed:
            if self.config is not None:
                warn_restart_only(self.config, config)
            self.config = config
        self._swap(routing, table)
        if changed:
            self.pools.update(config)
            self.parts.health.update(config, self._initially_healthy)
            for listener in self.on_config:
                listener(config)
        self.metrics.update_route_weights(shown, table.weights())

    async def canary_action(self, name: str, verb: str) -> dict:
        assert self.config is not None
        canaries = self.parts.canaries
        if canaries is None or all(c.name != name for c in self.config.canaries):
            raise NotFound(f"unknown canary {name!r}")
        ok, message = await canaries.action(name, verb)
        if not ok:
            raise BadInput(message)
        return {"canary": name, "action": verb, "message": message}

    async def reload_async(self) -> dict:
        return dict(await self.parts.reloader.reload_async())

    async def persisted(self) -> None:
        """Wait until every state change made so far is on disk."""
        await asyncio.wrap_future(self.store.flush())

    # -- what the canary manager calls (proxy.canary.runner.CanaryHost) ---------------

    def current_config(self) -> Config:
        assert self.config is not None
        return self.config

    def snapshot(self, route: str, version: str) -> Any:
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
        new = with_canary_route(self.routing, self.config, route, weights, match)
        self.apply(new, cause, quiet_if_same=True)

    def close_tunnels(self, route: str, version: str) -> None:
        self.parts.close_tunnels(route, version)

    def save_canary_state(self, name: str, state: dict) -> None:
        self.store.save_canary_state(name, state)

    def load_canary_state(self, name: str) -> dict | None:
        return self.store.load_canary_state(name)

    # -- what the admin API reads (formatted by proxy.status) ------------------------

    @property
    def registry(self) -> Any:
        return self.parts.registry

    def token_for(self, config: Config) -> str:
        return os.environ.get(config.admin.token_env, "")

    def token(self) -> str:
        return self.token_for(self.config) if self.config is not None else ""

    def history(self) -> list[dict]:
        return self.store.history()

    def series(self) -> dict:
        """The last 15 minutes of per-version rps, error % and P99 (the dashboard's charts)."""
        return self.metrics.series()

    def explain(self, req: dict) -> dict:
        assert self.table is not None
        return self.table.explain(*explain_args(req))

    def upstream_status(self) -> list[dict]:
        """Pools as the data plane sees them; with workers, `ejected` by any of them."""
        return views.upstreams(self.pools.status(), self.parts.workers)

    def ready(self) -> tuple[bool, str]:
        health, workers = self.parts.health, self.parts.workers
        if self.table is None:
            return False, "no config loaded"
        if workers is not None and workers.alive() == 0:
            return False, "no worker process is running"
        passed = frozenset(health.passed)
        return readiness(self.table.weights(), self.upstream_status(), health.probed(), passed)

    def status(self) -> dict:
        assert self.config is not None and self.table is not None
        parts = self.parts
        out = views.status(
            self.config,
            self.table.weights(),
            self.routing,
            self.metrics,
            head=self.store.head(),
            where={"config_file": parts.config_path, "state_dir": self.store.dir},
            last_reload_error=parts.reloader.last_error,
            upstreams=self.upstream_status(),
            canaries=parts.canaries.status() if parts.canaries is not None else [],
            workers=parts.workers.status() if parts.workers is not None else None,
        )
        if self.fleet is not None:
            out["cluster"] = self.fleet.status()
        return out
