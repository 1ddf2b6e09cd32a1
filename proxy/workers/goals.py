"""A/B goals under `serve --workers N`: workers find the user key, the supervisor counts.

Goal results count *distinct* users, which no per-worker number can be summed into. So a
worker forwards each (route, version, method, path, user key) it sees, deduplicated per
report, and the supervisor's GoalTracker.record takes them as if it had served them.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config.schema import Config
from proxy.routing.split import key_source, user_key

GoalEvent = tuple[str, str, str, str, str]  # route, version, method, path, user key
MAX_PENDING = 100_000  # per report; the supervisor keeps at most goals.MAX_USERS per set


class GoalRelay:
    """The data plane's `goals` in a worker: `wants` and `observe`, then `take` per report."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, str]] = {}
        self.watched: frozenset[str] = frozenset()  # the routes with goals (read per request)
        self._pending: set[GoalEvent] = set()

    def configure(self, config: Config) -> None:
        self._keys = {c.route: key_source(config, c.route) for c in config.canaries if c.goals}
        self.watched = frozenset(self._keys)

    def wants(self, route: str) -> bool:
        return route in self.watched

    def observe(
        self,
        route: str,
        version: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        client_ip: str,
    ) -> None:
        key = user_key(self._keys[route], headers, client_ip)
        if key and len(self._pending) < MAX_PENDING:
            self._pending.add((route, version, method, target.split("?", 1)[0], key))

    def take(self) -> tuple[GoalEvent, ...]:
        out, self._pending = tuple(self._pending), set()
        return out
