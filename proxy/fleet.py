"""Fleet mode (`serve --store etcd://.../CLUSTER`, SPEC §7): one replica's side of it.

Where store changes meet traffic: `FleetStore.on_change` -> `_on_change` -> one
`Control.from_store` swap (fanned out to the workers like any other). Every change a replica
makes goes the other way: one transaction (`change`, `publish_config`, the controller's
step in fleet_host), applied here when the watch brings it back, as on every replica.

Also here: the member document (lease-bound: who is alive, what it applied, its counters),
the election (the leader runs the canary controller), the status `cluster` block and the
store gauges.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Gauge

from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.routing.table import Overrides, build_table
from proxy.state import RoutingState, match_to_json, reconcile
from proxy.store import Conflict, StoreDown
from proxy.store.counters import encode
from proxy.store.election import Election
from proxy.store.etcd import Unavailable, cmp_create
from proxy.store.fleet import FleetStore
from proxy.store.keys import StoreURL, digest, routing_changes, under
from proxy.tasks import spawn

log = logging.getLogger("canaryproxy.fleet")
PUBLISH_EVERY = 1.0  # seconds between member documents (liveness, applied revision, counters)
START_WAIT = 10.0  # seconds a starting replica waits for etcd before serving its file


def default_replica(admin_port: int) -> str:
    return f"{socket.gethostname()}-{admin_port}"


def localize(config: Config, own: Config | None) -> Config:
    """The fleet's config with this replica's own addresses: `listen`, each listener's
    `listen` (by name) and `admin` always come from the replica's file (replicas on one host
    need ports of their own; an address is the machine's, not the fleet's)."""
    if own is None:
        return config
    mine = {x.name: x.listen for x in own.listeners}
    listeners = tuple(replace(x, listen=mine.get(x.name, x.listen)) for x in config.listeners)
    listen = mine.get(config.listeners[0].name, own.listen) if config.listeners else own.listen
    return replace(config, listen=listen, admin=own.admin, listeners=listeners)


class Fleet:
    def __init__(self, app: Any, url: StoreURL, replica: str, ttl: float = 5.0) -> None:
        self.app, self.url, self.replica, self.ttl = app, url, replica, ttl
        self.store = FleetStore(url, replica)
        self.keys = self.store.keys
        self.boot = uuid.uuid4().hex[:12]
        self.admin = ""  # host:port of this replica's admin API, once bound
        self.election = Election(self.store, {"replica": replica}, ttl)
        self.applied_revision = 0
        self.running_digest = ""  # the store config this replica serves
        self.file_digest = ""
        self.file_config: Config | None = None  # this replica's own file, as last read
        self.file_differs = False
        self.error: str | None = None  # a store config this replica could not apply
        self.manager: Any = None  # the CanaryManager while this replica leads
        self._phases: dict[str, str] = {}  # canary -> phase last seen in the store
        self._tasks: set[asyncio.Task] = set()

    @property
    def control(self) -> Any:
        return self.app.control

    # -- startup --------------------------------------------------------------------------

    async def open(self, file_text: str, file_config: Config) -> Config:
        """Read the store and return the config to start with: the store's, or the file's
        (published first when the store has none; served alone when etcd stays away)."""
        self.file_digest, self.file_config = digest(file_text), file_config
        deadline = time.monotonic() + START_WAIT
        while True:
            try:
                await self.store.load()
                break
            except Unavailable as exc:
                if time.monotonic() > deadline:
                    log.error("fleet: etcd unreachable (%s); serving %s until it is back",
                              exc, self.app.config_path)  # fmt: skip
                    return file_config
                await asyncio.sleep(0.5)
        for _ in range(5):
            if self.keys.config in self.store.snapshot:
                break
            try:
                await self.publish_config(file_text, file_config, first=True)
            except (Conflict, StoreDown) as exc:  # another replica published first
                log.info("fleet: %s", exc)
                await self.store.load()
        doc = self.store.snapshot.get(self.keys.config)
        if doc is None:
            return file_config
        config = self._parse(doc.value)
        if config is None:
            log.error(
                "fleet: the store's config does not load here (%s); serving the file", self.error
            )
            return file_config
        self.file_differs = config != file_config
        if self.file_differs:
            log.warning("fleet: %s differs from the fleet's config (published by %s); serving "
                        "the fleet's; change the file to publish it", self.app.config_path,
                        doc.value.get("by"))  # fmt: skip
        return config

    def start(self, admin: str) -> None:
        self.admin = admin
        self.election.me = {"replica": self.replica, "admin": admin}
        self.applied_revision = self.store.revision
        self.store.on_change = self._on_change
        spawn(self.store.run(), "fleet watch", self._tasks)
        spawn(self._members_loop(), "fleet member", self._tasks)
        spawn(self.election.run(self._elected, self._deposed), "fleet election", self._tasks)
        self._gauges()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None
        try:  # leave at once rather than when the member lease expires
            await asyncio.wait_for(self.store.etcd.delete(self.keys.member(self.replica)), 1.5)
        except (Unavailable, ValueError, TimeoutError):
            pass
        await self.store.aclose()

    # -- applying what the store says -----------------------------------------------------

    def _parse(self, doc: Any) -> Config | None:
        text = doc.get("text", "") if isinstance(doc, dict) else ""
        config, errors = load_text(text, "<fleet config>")
        if config is None or errors:
            self.error = "; ".join(errors) or "not a config"
            return None
        self.error = None
        self.running_digest = doc.get("digest") or digest(text)
        config = localize(config, self.file_config)
        self.file_differs = self.file_config is not None and config != self.file_config
        return config

    def _on_change(self, keys: set[str]) -> None:
        k = self.keys
        if k.leader in keys:
            self.election.poke()
        config_moved = k.config in keys
        routing_moved = any(key.startswith(k.weights_dir) for key in keys)
        if config_moved:
            doc = self.store.snapshot.get(k.config)
            fresh = doc is not None and doc.value.get("digest") != self.running_digest
            config = self._parse(doc.value) if fresh and doc is not None else None
            if fresh and config is None:
                log.error("fleet: the store's new config is refused here: %s", self.error)
            self._apply(config)
        elif routing_moved:
            self._apply(None)
        if config_moved or routing_moved or k.head in keys:
            self.applied_revision = self.store.revision
        if any(key.startswith(k.canary_dir) for key in keys):
            self._canaries_moved()

    def _apply(self, config: Config | None) -> None:
        try:
            self.control.from_store(config, self.store.load_routing())
        except ValueError as exc:
            self.error = f"the store's routing state does not build here: {exc}"
            log.error("fleet: %s", self.error)

    def _canaries_moved(self) -> None:
        """A rollback seen in the store closes the canary's tunnels here too (when asked)."""
        config = self.control.config
        for name, doc in under(self.store.snapshot, self.keys.canary_dir).items():
            phase = doc.value.get("phase", "") if isinstance(doc.value, dict) else ""
            before, self._phases[name] = self._phases.get(name), phase
            if phase != "Failed" or before in (None, "Failed") or config is None:
                continue
            for c in config.canaries:
                if c.name == name and c.analysis.close_tunnels_on_rollback:
                    self.app.close_tunnels(c.route, c.canary)

    # -- changing it ----------------------------------------------------------------------

    def require_fresh(self) -> None:
        stale = self.store.stale_seconds()
        if stale > 0 or not self.store.watching:
            raise StoreDown(f"the fleet store has not been heard from for {stale:.1f} s; "
                            "this replica serves its last state and takes no changes")  # fmt: skip

    async def change(self, build: Callable[[RoutingState], RoutingState], cause: str) -> dict:
        """An operator's change as one transaction; the log entry once applied here."""
        for _ in range(3):
            self.require_fresh()
            config = self.control.config
            new = build(reconcile(self.store.load_routing(), config))
            table = self.control.check(new)  # BadInput: nothing written
            puts, deletes = routing_changes(self.store.snapshot, self.keys, new)
            entry = self.entry(cause, table.weights(), new, epoch=self.election.epoch)
            try:
                _, written = await self.store.write(puts, deletes, entry)
                return written
            except Conflict:
                continue  # the head moved since this replica read it: build on the new state
        raise Conflict("another replica changed the routing state first, three times; try again")

    async def publish_config(self, text: str, config: Config, first: bool = False) -> int:
        """The file's config as the fleet's: one transaction with the reconciled routing."""
        if not first:
            self.require_fresh()
        self.file_digest, self.file_config = digest(text), config  # the file, published or not
        for _ in range(3):
            routing = reconcile(self.store.load_routing(), config)
            try:
                table = build_table(config, Overrides(routing.weights, routing.canary_match))
            except ValueError as exc:
                raise StoreDown(f"its routing state does not build: {exc}") from None
            puts, deletes = routing_changes(self.store.snapshot, self.keys, routing)
            doc = {"text": text, "digest": digest(text), "by": self.replica,
                   "time": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
            puts.append((self.keys.config, doc))
            guards = [cmp_create(self.keys.config, 0)] if first else []
            entry = self.entry("config", table.weights(), routing, epoch=self.election.epoch)
            entry["config_digest"] = doc["digest"]
            try:
                _, written = await self.store.write(puts, deletes, entry, guards)
                return int(written["revision"])
            except Conflict:
                if first:
                    raise
                continue
        raise Conflict("another replica changed the fleet's state first, three times")

    def entry(self, cause: str, weights: dict, routing: RoutingState, epoch: int) -> dict:
        return {"cause": cause, "epoch": epoch, "weights": weights,
                "canary_match": match_to_json(routing.canary_match)}  # fmt: skip

    # -- membership and leadership --------------------------------------------------------

    def member_doc(self) -> dict:
        return {"replica": self.replica, "admin": self.admin, "boot": self.boot,
                "applied_revision": self.applied_revision, "time": time.time(),
                "counters": encode(self.control.metrics.snapshots())}  # fmt: skip

    async def _members_loop(self) -> None:
        etcd, lease = self.store.etcd, 0
        while True:
            try:
                if not lease:
                    lease = await etcd.grant(max(1, round(self.ttl)))
                await etcd.put(self.keys.member(self.replica), self.member_doc(), lease)
                if await etcd.keepalive(lease) <= 0:
                    lease = 0
                self.store.contact()
            except Unavailable:
                pass
            except ValueError:  # the lease is gone (etcd answers 4xx): a new one
                lease = 0
            await asyncio.sleep(PUBLISH_EVERY)

    def members(self) -> list[dict]:
        return [d.value for d in under(self.store.snapshot, self.keys.members_dir).values()
                if isinstance(d.value, dict)]  # fmt: skip

    async def _elected(self, epoch: int) -> None:
        from proxy.canary.runner import CanaryManager
        from proxy.fleet_host import FleetHost

        manager = CanaryManager(FleetHost(self))
        goals = getattr(self.app.canaries, "goals", None)
        if goals is not None:
            manager.goals = goals  # the data plane here counts into it
        self.manager = manager
        if self.control.config is not None:
            await self.manager.sync(self.control.config)

    async def _deposed(self, why: str) -> None:
        manager, self.manager = self.manager, None
        if manager is not None:
            await manager.stop()

    # -- what the status and /metrics show -------------------------------------------------

    def status(self) -> dict:
        epoch, leader = self.election.leader()
        return {
            "store": str(self.url),
            "replica": self.replica,
            "leader": leader.get("replica") if leader else None,
            "epoch": epoch,
            "revision": self.applied_revision,
            "stale_seconds": round(self.store.stale_seconds(), 3),
            "members": sorted(
                (
                    {
                        "replica": m.get("replica"),
                        "applied_revision": m.get("applied_revision", 0),
                        "admin": m.get("admin", ""),
                    }
                    for m in self.members()
                ),
                key=lambda m: str(m["replica"]),
            ),  # fmt: skip
            "config": {"digest": self.running_digest[:12], "file_differs": self.file_differs},
            "error": self.error,
        }

    def _gauges(self) -> None:
        registry = self.app.registry
        stale = Gauge("canaryproxy_store_stale_seconds",
                      "Seconds since this replica last heard from the fleet store (0: current)",
                      registry=registry)  # fmt: skip
        stale.set_function(self.store.stale_seconds)
        rev = Gauge("canaryproxy_store_revision", "The store revision this replica applied",
                    registry=registry)  # fmt: skip
        rev.set_function(lambda: self.applied_revision)
        lead = Gauge("canaryproxy_controller_leader",
                     "1 on the replica that runs the canary controller", registry=registry)  # fmt: skip
        lead.set_function(lambda: 1 if self.election.epoch else 0)
