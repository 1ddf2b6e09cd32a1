"""Wiring: the parts of one proxy, started and stopped in-process.

The parts: the state store, metrics, upstream pools and active health checks; `control`
(proxy.control), which holds the config, routing state and table and through which every
change goes; the `reloader` (proxy.config.reload) that turns the file into commits; the
data plane (in this process, or `workers` processes fed by the supervisor); the admin API;
and the canary manager. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from operator import attrgetter
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.admin import AdminAPI
from proxy.config.reload import Reloader
from proxy.config.schema import Config
from proxy.control import Control
from proxy.dataplane.health import HealthChecker
from proxy.dataplane.upstream import Pools
from proxy.heap import settle_heap
from proxy.metrics import ProxyMetrics
from proxy.net import StartupError, bind, check_free, is_loopback, split_listen
from proxy.routing.table import RoutingTable
from proxy.state import RoutingState, StateStore
from proxy.tasks import spawn

log = logging.getLogger("canaryproxy")

try:  # the canary controller is optional: without it the proxy still routes
    from proxy.canary.runner import CanaryManager
except ImportError:  # pragma: no cover - depends on what is installed
    CanaryManager = None  # type: ignore[assignment,misc]


def check_admin(config: Config, token: str | None) -> None:
    """Refuse an admin API reachable from other hosts without a token."""
    host, _ = split_listen(config.admin.listen)
    if not is_loopback(host) and not token:
        raise StartupError(
            f"refusing to start: admin.listen {config.admin.listen} is not a loopback "
            f"address and ${config.admin.token_env} is not set; set a token or bind "
            "admin to 127.0.0.1",
            code=2,
        )


class App:
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
        store: str = "",
        replica: str = "",
        election_ttl: float = 5.0,
    ) -> None:
        """`watch_interval` 0 turns the file watcher off (SIGHUP and the API still reload).
        `store` (etcd://...) runs this App as one replica of a fleet (proxy.fleet)."""
        self.config_path = config_path
        self.worker_count = workers
        self.log_level = log_level
        self.workers: Any = None  # a WorkerSet when worker_count > 1
        self.watch_interval = watch_interval
        self.store = StateStore(state_dir)
        self.registry = CollectorRegistry()
        self.control: Control | None = None
        self.reloader = Reloader(config_path, self._prepare, self._commit)
        self.canaries: Any = None
        self.proxy_port = 0  # the first listener's port
        self.listener_ports: dict[str, int] = {}  # listener name -> bound port
        self.admin_port = 0
        self._tasks: set[asyncio.Task] = set()  # started by `spawn`, cancelled by `stop`
        self._server: Any = None
        self._runner: web.AppRunner | None = None
        self._access_log: Any = None
        self.health = HealthChecker(self._on_health)
        self.store_url, self.replica, self.election_ttl = store, replica, election_ttl
        self.fleet: Any = None  # proxy.fleet.Fleet in fleet mode

    # -- what the control holds, for readers -----------------------------------------

    @property
    def config(self) -> Config | None:
        return self.control.config if self.control is not None else None

    @property
    def table(self) -> RoutingTable | None:
        return self.control.table if self.control is not None else None

    @property
    def routing(self) -> RoutingState:
        return self.control.routing if self.control is not None else RoutingState()

    @property
    def last_reload_error(self) -> str | None:
        return self.reloader.last_error

    def reload(self) -> dict:
        self._reload_certificates()
        return self.reloader.reload()

    async def reload_async(self) -> dict:
        self._reload_certificates()
        return await self.reloader.reload_async()

    def _reload_certificates(self) -> None:
        """SIGHUP and POST /api/v1/reload reload TLS certificates too (workers poll them)."""
        if self._server is not None:
            self._server.reload_certificates()

    # -- startup and shutdown --------------------------------------------------------

    async def start(self) -> None:
        config, errors = self.reloader.first()
        if errors or config is None:
            raise StartupError("\n".join(errors))
        if self.store_url:
            config = await self._open_fleet(config)
        self.metrics = ProxyMetrics(self.registry, config.metrics.compat)
        self.pools = Pools(config)
        control = self.control = Control(self, self._publish)
        check_admin(config, control.token_for(config))
        self.reloader.counted, self.reloader.head = self.metrics.reload, self.store.head
        control.fleet = self.fleet
        control.commit(config)
        control.say_overrides()
        if self.fleet is None and control.differs_from_head():
            control.record("reload")
        if self.worker_count > 1:
            await self._start_workers()
        else:
            await self._start_proxy(config)
        await self._start_admin(config)
        if self.watch_interval > 0:
            self.reloader.watch(self.watch_interval)
        self.spawn(self._tick_loop(), "metrics tick")
        settle_heap()
        if self.fleet is not None:
            self._start_fleet(config)
        elif CanaryManager is not None:
            self.canaries = CanaryManager(control)
            control.on_config.append(self._sync_canaries)
            await self.canaries.sync(config)
            if hasattr(self._server, "goals"):  # A/B goal counting, where the data plane has it
                self._server.goals = self.canaries.goals
        log.info("proxy on port %d, admin on port %d", self.proxy_port, self.admin_port)
        if len(self.listener_ports) > 1:
            log.info(
                "listeners: %s",
                ", ".join(f"{n} on port {p}" for n, p in self.listener_ports.items()),
            )

    async def _start_proxy(self, config: Config) -> None:
        from proxy.dataplane.server import ProxyServer

        access_log = None
        if config.access_log:
            from proxy.dataplane.accesslog import AccessLog

            access_log = self._access_log = AccessLog(config.access_log)
        control = self.control
        assert control is not None
        # read per request: straight from control, not through the App's properties, and
        # by a C-level getter (a lambda would run the interpreter once per request)
        self._server = ProxyServer(
            partial(attrgetter("table"), control),
            self.pools,
            self.metrics,
            access_log,
            config.limits,
        )
        for listener in config.all_listeners():
            sock = bind(listener.listen)
            host, port = split_listen(listener.listen)
            await self._server.start(
                host, port, sock=sock, listener=listener.name, tls=listener.tls
            )
        self.listener_ports = dict(self._server.ports)
        self.proxy_port = self._server.port

    async def _start_workers(self) -> None:
        from proxy.workers.supervisor import WorkerFailed, WorkerSet

        assert self.control is not None and self.config is not None
        listeners = tuple(
            (x.name, *check_free(x.listen)) for x in self.config.all_listeners()
        )  # each (name, host, port)
        self.workers = WorkerSet(
            self.worker_count,
            self.control.worker_state,
            self.metrics,
            self.log_level,
            self._on_goals,
        )
        try:
            await self.workers.start(listeners)
        except WorkerFailed as exc:
            raise StartupError(f"cannot start the data plane: {exc}") from None
        self.listener_ports = {name: port for name, _, port in listeners}
        self.proxy_port = listeners[0][2]

    def _on_goals(self, events: tuple[tuple[str, str, str, str, str], ...]) -> None:
        """A/B goal events forwarded by the workers (proxy.workers.goals)."""
        if self.canaries is not None:
            for event in events:
                self.canaries.goals.record(*event)

    def close_tunnels(self, route: str, version: str) -> None:
        """Close `version`'s open tunnels on `route`, in every data-plane process."""
        if self.workers is not None:
            self.workers.close_tunnels(route, version)
        elif self._server is not None:
            from proxy.dataplane.tunnel import close_version

            n = close_version(self._server, route, version)
            log.info("route %s: closed %d tunnel(s) of %s", route, n, version)

    def _publish(self) -> None:
        """Routing, config or health changed: workers rebuild their table from it."""
        if self.workers is not None:
            self.workers.publish()

    async def _start_admin(self, config: Config) -> None:
        assert self.control is not None
        sock = bind(config.admin.listen)
        self.admin_port = sock.getsockname()[1]
        self._runner = web.AppRunner(AdminAPI(self.control).build(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (at most `timeout` s)."""
        if self._server is not None:
            await self._server.drain(timeout)
        if self.workers is not None:
            await self.workers.drain(timeout)

    async def stop(self) -> None:
        await self.reloader.stop()
        if self.fleet is not None:
            await self.fleet.stop()
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

    def spawn(self, coro: Any, name: str) -> None:
        """A background task of this App: cancelled by `stop`."""
        spawn(coro, name, self._tasks)

    async def _tick_loop(self) -> None:
        assert self.control is not None
        while True:
            self.metrics.tick()
            self.metrics.set_upstream_health(
                (u["name"], e["address"], e["healthy"] and not e["ejected"])
                for u in self.control.upstream_status()
                for e in u["endpoints"]
            )
            await asyncio.sleep(1.0)

    # -- what the reloader and the health checker call -------------------------------

    async def _prepare(self, config: Config) -> Any:
        assert self.control is not None
        return await self.control.prepare(config)

    def _commit(self, config: Config, prepared: Any) -> int:
        assert self.control is not None
        return self.control.reloaded(config, prepared)

    # -- fleet mode ------------------------------------------------------------------------

    async def _open_fleet(self, file_config: Config) -> Config:
        """Fleet mode: the store's config (or the file's, published) is the one to start."""
        from proxy.fleet import Fleet, default_replica
        from proxy.store.keys import parse_store_url

        try:
            url = parse_store_url(self.store_url)
        except ValueError as exc:
            raise StartupError(str(exc), code=2) from None
        _, port = split_listen(file_config.admin.listen)
        name = self.replica or default_replica(int(port) or os.getpid())
        self.fleet = Fleet(self, url, name, self.election_ttl)
        with open(self.config_path) as f:
            text = f.read()
        config = await self.fleet.open(text, file_config)
        self.store.close()
        self.store = self.fleet.store
        self.reloader.publish = self.fleet.publish_config
        return config

    def _start_fleet(self, config: Config) -> None:
        from proxy.fleet_host import FleetCanaries

        assert self.control is not None
        host, _ = split_listen(config.admin.listen)
        self.fleet.start(f"{host}:{self.admin_port}")
        self.canaries = FleetCanaries(self.fleet)
        self.control.on_config.append(self._sync_canaries)
        if hasattr(self._server, "goals"):
            self._server.goals = self.canaries.goals

    def _sync_canaries(self, config: Config) -> None:
        if self.canaries is not None:
            self.spawn(self.canaries.sync(config), "canary sync")

    def _on_health(self, subset: str, address: str, healthy: bool) -> None:
        self.pools.set_health(subset, address, healthy)
        self._publish()


__all__ = ["App", "StartupError", "bind", "is_loopback", "split_listen"]
