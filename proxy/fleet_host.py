"""The canary controller in fleet mode: what it runs on (`FleetHost`), and what every
replica's admin API and status see of it (`FleetCanaries`).

On the leader the CanaryRunner works as on one machine, with one difference: its
commands do not act here. `apply_canary` and `save_canary_state` only collect; then
`commit_step` writes them as **one** transaction — the canary document (phase, step,
failed checks, the step's times), the route's weights and a log entry — fenced by
`create_revision(leader key) == epoch` and the canary document's mod_revision. The watch
then applies it on every replica, this one included. A fenced or unreachable store means
the step did not happen (the runner goes back to the state before it).

The judgement adds up every replica's counters (`provider: fleet`, also what `builtin`
means in a fleet: one replica's share of the traffic is not the release's).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from proxy.canary.goals import GoalTracker
from proxy.state import reconcile, with_canary_route
from proxy.store import Conflict, crash
from proxy.store.counters import Members, add, fleet_snapshot, members_of
from proxy.store.etcd import cmp_mod
from proxy.store.fleet import Fenced
from proxy.store.keys import routing_changes, under

log = logging.getLogger("canaryproxy.fleet")


class FleetHost:
    """proxy.canary.runner.CanaryHost for the leader's runners."""

    resume_on_persisted_times = True  # a new leader judges when the old one would have

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.metrics = fleet.control.metrics
        self._pending: dict[str, dict[str, Any]] = {}

    @property
    def epoch(self) -> int:
        return int(self.fleet.election.epoch)

    def current_config(self) -> Any:
        return self.fleet.control.current_config()

    def _others(self) -> list[dict]:
        return [m for m in self.fleet.members() if m.get("replica") != self.fleet.replica]

    def snapshot(self, route: str, version: str) -> Any:
        """This replica's live counters plus every other member's last published ones."""
        return add(
            self.metrics.snapshot(route, version), fleet_snapshot(self._others(), route, version)
        )

    def members(self) -> Members:
        return members_of(self._others()) | {(self.fleet.replica, self.fleet.boot)}

    def apply_canary(self, canary: str, route: str, weights: dict[str, float] | None,
                     match: Any, cause: str) -> None:  # fmt: skip
        self._pending.setdefault(canary, {})["route"] = (route, weights, match, cause)

    def save_canary_state(self, name: str, state: dict) -> None:
        self._pending.setdefault(name, {})["state"] = json.loads(json.dumps(state))

    def load_canary_state(self, name: str) -> dict | None:
        return self.fleet.store.load_canary_state(name)

    def gathered(self) -> None:
        """A tick's webhooks have answered; its step is not written yet."""
        crash.at("after-webhook")

    def close_tunnels(self, route: str, version: str) -> None:
        self.fleet.app.close_tunnels(route, version)

    async def commit_step(self, name: str) -> None:
        """What the runner just did, as one fenced transaction (raises: nothing happened)."""
        pending = self._pending.pop(name, None)
        if not pending:
            return
        fleet, store, keys = self.fleet, self.fleet.store, self.fleet.keys
        if not self.epoch:
            raise Fenced("this replica does not lead the controller")
        guards = [fleet.election.guard(), cmp_mod(keys.canary(name), store.canary_revision(name))]
        for _ in range(5):
            fleet.require_fresh()
            puts, deletes, entry = self._routing(pending.get("route"))
            if "state" in pending:
                puts.append((keys.canary(name), pending["state"]))
            if not puts and not deletes:
                return
            crash.at("before-step")
            try:
                await store.write(puts, deletes, entry, guards)
                crash.at("after-step")
                return
            except Conflict:
                continue  # an operator's change landed first: the step builds on it
            except Fenced:
                fleet.election.poke()
                raise
        raise Conflict("the routing state kept moving under the controller's step")

    def _routing(self, change: Any) -> tuple[list, list, dict | None]:
        """(puts, deletes, log entry) for a SetRoute; nothing when the routing stays."""
        if change is None:
            return [], [], None
        route, weights, match, cause = change
        fleet, control = self.fleet, self.fleet.control
        config = control.current_config()
        current = reconcile(fleet.store.load_routing(), config)
        new = with_canary_route(current, config, route, weights, match)
        table, before = control.check(new), control.check(current)
        if (table.weights(), new.canary_match) == (before.weights(), current.canary_match):
            return [], [], None
        puts, deletes = routing_changes(fleet.store.snapshot, fleet.keys, new)
        return puts, deletes, fleet.entry(cause, table.weights(), new, self.epoch)


class FleetCanaries:
    """`App.canaries` in fleet mode: the leader's CanaryManager when this replica leads;
    otherwise the store's canary documents, and actions forwarded to the leader."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet
        self.goals = GoalTracker()

    async def sync(self, config: Any) -> None:
        if self.fleet.manager is not None:
            await self.fleet.manager.sync(config)

    async def action(self, name: str, verb: str) -> tuple[bool, str]:
        manager = self.fleet.manager
        if manager is not None:
            return await manager.action(name, verb)
        deadline = asyncio.get_running_loop().time() + self.fleet.ttl + 1
        _, leader = self.fleet.election.leader()
        while (
            not leader or not leader.get("admin")
        ) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)  # an election is under way
            _, leader = self.fleet.election.leader()
        if not leader or not leader.get("admin"):
            return False, "no replica leads the controller right now; try again in a few seconds"
        return await _forward(leader["admin"], name, verb, self.fleet.control.token())

    def status(self) -> list[dict]:
        manager = self.fleet.manager
        if manager is not None:
            return list(manager.status())
        config = self.fleet.control.config
        docs = under(self.fleet.store.snapshot, self.fleet.keys.canary_dir)
        out = []
        for c in config.canaries if config is not None else ():
            d = docs.get(c.name)
            s = d.value if d is not None and isinstance(d.value, dict) else {}
            out.append({"name": c.name, "route": c.route, "mode": c.mode, "stable": c.stable,
                        "canary": c.canary, "phase": s.get("phase", "Idle"),
                        "weight": s.get("weight", 0.0), "step": int(s.get("step", 0)) + 1
                        if s.get("started_at") is not None else 0,
                        "failed_checks": s.get("failed_checks", 0), "message": s.get("message", ""),
                        "promoted": s.get("promoted", False), "run_by": "leader"})  # fmt: skip
        return out

    async def stop(self) -> None:
        """The leader's manager is stopped with the fleet (proxy.fleet.Fleet.stop)."""


async def _forward(admin: str, name: str, verb: str, token: str) -> tuple[bool, str]:
    host, _, port = admin.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/api/v1/canaries/{name}/{verb}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return False, f"the leader at {admin} did not answer: {exc}"
    message = (body.get("message") or body.get("error") or "") if isinstance(body, dict) else ""
    return r.status < 300, f"{message} (by the leader at {admin})"
