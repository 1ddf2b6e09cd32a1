"""Wiring: config, routing table, data plane, admin API, health checks, canaries.

The App owns the running Config and the routing overrides. Every change (reload,
weights, switch, undo, a canary step) builds a new RoutingTable aside and swaps one
reference; anything that fails while building leaves the running table untouched.
Builds reuse the routes compiled before (BuildCache), so a weight change costs about a
millisecond; a reload first compiles the new routes a slice at a time (`reload_async`)
and then swaps synchronously. Mutations that swap are synchronous on the event loop, so
they never interleave, and each one builds from the routing state current at its swap. The data plane reads `self.table` once per request, so requests in
flight finish on the table they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import AdminAPI, BadInput
from proxy.app_control import AdminControl, CanaryHostControl, check_admin, warn_restart_only
from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.dataplane.health import HealthChecker
from proxy.dataplane.upstream import Pools
from proxy.metrics import ProxyMetrics
from proxy.net import (
    ConfigParser,
    StartupError,
    bind,
    build_table_stepwise,
    check_free,
    is_loopback,
    keep_config,
    settle_heap,
    split_listen,
)
from proxy.routing.split import format_weights
from proxy.routing.table import BuildCache, Overrides, RoutingTable, build_table, retire
from proxy.state import RoutingState, StateStore, match_from_json, reconcile
from proxy.tasks import spawn

log = logging.getLogger("canaryproxy")

try:  # the canary controller is optional: without it the proxy still routes
    from proxy.canary.runner import CanaryManager
except ImportError:  # pragma: no cover - depends on what is installed
    CanaryManager = None  # type: ignore[assignment,misc]


class App(AdminControl, CanaryHostControl):
    """One proxy: data plane + admin API + controllers, started and stopped in-process.

    With `workers` > 1 this process is the supervisor: the data plane runs in that many
    worker processes (proxy.workers.supervisor) fed with every routing change, and `metrics` holds
    the sum of their counters.
    """

    def __init__(
        self,
        config_path: str,
        state_dir: str = "./.canaryproxy",
        watch_interval: float = 1.0,
        workers: int = 1,
        log_level: str = "info",
    ) -> None:
        """`watch_interval` 0 turns the file watcher off (SIGHUP and the API still reload)."""
        self.config_path = config_path
        self.worker_count = workers
        self.log_level = log_level
        self.workers: Any = None  # a WorkerSet when worker_count > 1
        self.watch_interval = watch_interval
        self.store = StateStore(state_dir)
        self.registry = CollectorRegistry()
        self.config: Config | None = None
        self.routing = RoutingState()
        self.table: RoutingTable | None = None
        self._cache = BuildCache()  # compiled routes of the running table, reused by builds
        self._parser = ConfigParser()  # parses reloads off the event loop
        self._reload_lock = asyncio.Lock()  # one reload at a time; later ones wait
        self.last_reload_error: str | None = None
        self.canaries: Any = None
        self.proxy_port = 0
        self.admin_port = 0
        self._hash = self._bad_hash = ""
        self._tasks: set[asyncio.Task] = set()  # started by `spawn`, cancelled by `stop`
        self._server: Any = None
        self._runner: web.AppRunner | None = None
        self._watcher: Any = None
        self._access_log: Any = None
        self.health = HealthChecker(self._on_health)

    # -- startup and shutdown --------------------------------------------------------

    async def start(self) -> None:
        config, text_hash = self._read_config()
        check_admin(config, self.token_for(config))
        self.metrics = ProxyMetrics(self.registry, config.metrics.compat)
        self.pools = Pools(config)
        self._commit_config(config, text_hash)
        self._say_overrides()
        if self._differs_from_head():
            self._record("reload")
        if self.worker_count > 1:
            await self._start_workers(config)
        else:
            await self._start_proxy(config)
        await self._start_admin(config)
        self._start_watch()
        self.spawn(self._tick_loop(), "metrics tick")
        settle_heap()
        if CanaryManager is not None:
            self.canaries = CanaryManager(self)
            await self.canaries.sync(config)
            if hasattr(self._server, "goals"):  # A/B goal counting, where the data plane has it
                self._server.goals = self.canaries.goals
        log.info("proxy on port %d, admin on port %d", self.proxy_port, self.admin_port)

    def _read_config(self) -> tuple[Config, str]:
        text, text_hash, errors = self._read_file()
        config = None
        if not errors:
            config, errors = load_text(text, self.config_path)
        if errors or config is None:
            raise StartupError("\n".join(errors))
        return config, text_hash

    def _read_file(self) -> tuple[str, str, list[str]]:
        try:
            with open(self.config_path, "rb") as f:
                raw = f.read()
            return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest(), []
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            return "", "", [f"{self.config_path}: cannot read: {why}"]

    async def _start_proxy(self, config: Config) -> None:
        from proxy.dataplane.server import ProxyServer

        access_log = None
        if config.access_log:
            from proxy.dataplane.accesslog import AccessLog

            access_log = self._access_log = AccessLog(config.access_log)
        sock = bind(config.listen)
        self.proxy_port = sock.getsockname()[1]
        self._server = ProxyServer(
            lambda: self.table, self.pools, self.metrics, access_log, config.limits
        )
        host, port = split_listen(config.listen)
        await self._server.start(host, port, sock=sock)

    async def _start_workers(self, config: Config) -> None:
        from proxy.workers.supervisor import WorkerFailed, WorkerSet

        host, port = check_free(config.listen)
        self.workers = WorkerSet(
            self.worker_count, self._worker_state, self.metrics, self.log_level, self._on_goals
        )
        try:
            await self.workers.start(host, port)
        except WorkerFailed as exc:
            raise StartupError(f"cannot start the data plane: {exc}") from None
        self.proxy_port = port

    def _worker_state(self) -> tuple[Config, Overrides, tuple[tuple[str, str, bool], ...]]:
        assert self.config is not None
        health = tuple(
            (u["name"], e["address"], bool(e["healthy"]))
            for u in self.pools.status()
            for e in u["endpoints"]
        )
        return self.config, Overrides(self.routing.weights, self.routing.canary_match), health

    def _on_goals(self, events: tuple[tuple[str, str, str, str, str], ...]) -> None:
        """A/B goal events forwarded by the workers (proxy.workers.goals)."""
        if self.canaries is not None:
            for event in events:
                self.canaries.goals.record(*event)

    def _publish(self) -> None:
        """Routing, config or health changed: workers rebuild their table from it."""
        if self.workers is not None:
            self.workers.publish()

    async def _start_admin(self, config: Config) -> None:
        sock = bind(config.admin.listen)
        self.admin_port = sock.getsockname()[1]
        self._runner = web.AppRunner(AdminAPI(self).build(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def _start_watch(self) -> None:
        if self.watch_interval <= 0:
            return
        try:
            from proxy.config.watch import ConfigWatcher
        except ImportError:
            log.warning("config file watching unavailable; reload with SIGHUP or the API")
            return
        self._watcher = ConfigWatcher(self.config_path, self._on_file_change, self.watch_interval)
        self._watcher.start()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (at most `timeout` s)."""
        if self._server is not None:
            await self._server.drain(timeout)
        if self.workers is not None:
            await self.workers.drain(timeout)

    async def stop(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.canaries is not None:
            await self.canaries.stop()
        await self.health.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.close()
        if self.workers is not None:
            await self.workers.stop()
        if hasattr(self, "pools"):
            self.pools.close()
        if self._access_log is not None:
            self._access_log.close()
        await asyncio.to_thread(self.store.close)
        await asyncio.to_thread(self._parser.close)

    def spawn(self, coro: Any, name: str) -> None:
        """A background task of this App: cancelled by `stop`."""
        spawn(coro, name, self._tasks)

    async def _tick_loop(self) -> None:
        while True:
            self.metrics.tick()
            self.metrics.set_upstream_health(
                (u["name"], e["address"], e["healthy"] and not e["ejected"])
                for u in self.upstream_status()
                for e in u["endpoints"]
            )
            await asyncio.sleep(1.0)

    # -- config and table ------------------------------------------------------------

    def _commit_config(self, config: Config, text_hash: str) -> None:
        routing = reconcile(self._loaded_routing(), config)
        table = build_table(config, Overrides(routing.weights, routing.canary_match), self._cache)
        shown = self.table.weights() if self.table is not None else {}
        retire(self.table, table)
        self.config, self.routing, self.table, self._hash = config, routing, table, text_hash
        self.pools.update(config)
        self.health.update(config, self._initially_healthy)
        self.metrics.update_route_weights(shown, table.weights())
        self.store.save_routing(routing)
        self._publish()

    def _say_overrides(self) -> None:
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

    def _loaded_routing(self) -> RoutingState:
        return self.routing if self.config is not None else self.store.load_routing()

    def _initially_healthy(self, subset: str, address: str) -> bool:
        pool = self.pools.pool(subset)
        for ep in pool.endpoints if pool else ():
            if ep.address == address:
                return bool(ep.healthy)
        return True

    def _apply(self, routing: RoutingState, cause: str, quiet_if_same: bool = False) -> dict:
        """Build a table for `routing`; on success swap it in and record a revision.

        `quiet_if_same`: when the effective routing did not change, record no revision
        (a canary re-asserting its weights each phase is not a change of routing state).
        """
        assert self.config is not None and self.table is not None
        try:
            overrides = Overrides(routing.weights, routing.canary_match)
            table = build_table(self.config, overrides, self._cache)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        old = self.table.weights()
        same = (table.weights(), routing.canary_match) == (old, self.routing.canary_match)
        retire(self.table, table)
        self.routing, self.table = routing, table
        self._publish()
        if quiet_if_same and same:
            self.store.save_routing(routing)
            return self.store.get(self.store.head()) or {}
        self.metrics.update_route_weights(old, table.weights())
        self.store.save_routing(routing)
        return self._record(cause)

    def _record(self, cause: str) -> dict:
        assert self.table is not None
        return self.store.record(cause, self.table.weights(), self.routing.canary_match)

    def _differs_from_head(self) -> bool:
        head = self.store.get(self.store.head())
        if head is None or self.table is None:
            return True
        same_match = match_from_json(head["canary_match"]) == self.routing.canary_match
        return head["weights"] != self.table.weights() or not same_match

    async def _on_file_change(self) -> None:
        await self.reload_async()

    def reload(self) -> dict:
        """Re-read the file; a bad file changes nothing and is counted as rejected.

        Synchronous: a large config compiles inline. The server uses `reload_async`.
        """
        text, text_hash, errors = self._read_file()
        known = self._known_file(text_hash)
        if known is not None:
            return known
        config = None
        if not errors:
            config, errors = load_text(text, self.config_path)
        return self._finish_reload(config, errors, text_hash)

    async def reload_async(self) -> dict:
        """`reload` that keeps serving: parse in a thread, compile the routes a slice at a
        time, then swap at once. Reloads are serialised; a weight change made meanwhile is
        kept (the swap builds from the routing state current at that moment)."""
        async with self._reload_lock:
            text, text_hash, errors = self._read_file()
            known = self._known_file(text_hash)
            if known is not None:
                return known
            config = None
            if not errors:
                config, errors = await self._parser.load(text, self.config_path)
            if config is not None:
                errors = await self._precompile(config)
            return self._finish_reload(config, errors, text_hash)

    def _known_file(self, text_hash: str) -> dict | None:
        """The answer for a file already loaded or rejected, or None when it is new."""
        if self._watcher is not None:
            self._watcher.mark_loaded()  # the watcher need not fire again for this content
        if text_hash and text_hash in (self._hash, self._bad_hash):
            if text_hash == self._bad_hash and self.last_reload_error:
                return {"result": "rejected", "error": self.last_reload_error}
            if self.last_reload_error:  # the file is back to the running content: valid
                log.info("config file is the running config again; last reload error cleared")
                self.last_reload_error, self._bad_hash = None, ""
            return {"result": "unchanged", "revision": self.store.head()}
        return None

    async def _precompile(self, config: Config) -> list[str]:
        """Compile the new config's routes into a fork of the cache, yielding the loop
        between slices; the running table and cache serve on meanwhile."""
        fork = self._cache.fork()
        routing = reconcile(self.routing, config)
        overrides = Overrides(routing.weights, routing.canary_match)
        try:
            await build_table_stepwise(config, overrides, fork)
        except ValueError as exc:
            return [f"{self.config_path}: {exc}"]
        self._cache = fork
        return []

    def _finish_reload(self, config: Config | None, errors: list[str], text_hash: str) -> dict:
        if config is not None and not errors:
            errors = self._try_commit(config, text_hash)
        if errors:
            return self._reject(errors, text_hash)
        self.metrics.reload("ok")
        keep_config()
        self.last_reload_error = None
        rev = self._record("reload")
        if self.canaries is not None:
            self.spawn(self.canaries.sync(config), "canary sync")
        log.info("config reloaded: revision %d", rev["revision"])
        return {"result": "ok", "revision": rev["revision"]}

    def _try_commit(self, config: Config, text_hash: str) -> list[str]:
        assert self.config is not None
        warn_restart_only(self.config, config)
        try:
            self._commit_config(config, text_hash)
        except ValueError as exc:
            return [f"{self.config_path}: {exc}"]
        return []

    def _reject(self, errors: list[str], text_hash: str) -> dict:
        for line in errors:
            log.error("config rejected: %s", line)
        self.metrics.reload("rejected")
        self._bad_hash = text_hash
        self.last_reload_error = "; ".join(errors)
        return {"result": "rejected", "error": self.last_reload_error, "errors": errors}

    # -- health ----------------------------------------------------------------------

    def _on_health(self, subset: str, address: str, healthy: bool) -> None:
        self.pools.set_health(subset, address, healthy)
        self._publish()


__all__ = ["App", "StartupError", "bind", "is_loopback", "split_listen"]
