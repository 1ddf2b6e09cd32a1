"""A/B results: per-version conversion of sticky users to goals, and a winner.

`GoalTracker.record(...)` is called by the data plane for every answered request of a route
that has an `ab` canary with goals; it counts distinct user keys per version (exposed) and per
goal (converted). The statistics are pure: Wilson score interval for each conversion rate,
a two-sided two-proportion z-test between the versions, and a winner only when p < alpha.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.canary.judge import normal_sf
from proxy.config.schema import Canary, Config, Goal
from proxy.routing.split import key_source, user_key

__all__ = ["GoalTracker", "goal_result", "key_source", "user_key", "wilson"]

MAX_USERS = 200_000  # per (route, version) set: bounds memory on a busy route


def z_for(confidence: float) -> float:
    """Two-sided critical value for a confidence in percent (bisection on normal_sf)."""
    target = (1.0 - confidence / 100.0) / 2.0
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if normal_sf(mid) > target else (lo, mid)
    return (lo + hi) / 2


def wilson(successes: int, n: int, confidence: float = 95.0) -> tuple[float, float]:
    """Wilson score interval of a proportion, in 0..1; (0, 1) with no data."""
    if n <= 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_sided_p(x1: int, n1: int, x2: int, n2: int) -> float:
    if n1 <= 0 or n2 <= 0:
        return 1.0
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return 1.0
    z = abs(x1 / n1 - x2 / n2) / math.sqrt(var)
    return 2 * normal_sf(z)


def goal_result(
    goal: str, counts: dict[str, tuple[int, int]], confidence: float
) -> dict[str, object]:
    """counts: version -> (converted users, exposed users). Winner needs significance."""
    versions: dict[str, object] = {}
    for v, (conv, n) in counts.items():
        lo, hi = wilson(conv, n, confidence)
        rate = conv / n if n else 0.0
        versions[v] = {"users": n, "converted": conv, "rate": rate, "ci": [lo, hi]}
    names = sorted(counts)
    winner, p = None, 1.0
    if len(names) == 2:
        (c1, n1), (c2, n2) = counts[names[0]], counts[names[1]]
        p = two_sided_p(c1, n1, c2, n2)
        if p < 1 - confidence / 100.0:
            winner = names[0] if c1 / n1 > c2 / n2 else names[1]
    return {"goal": goal, "versions": versions, "p_value": p, "winner": winner}


@dataclass(frozen=True)
class _Watch:
    canary: str
    versions: tuple[str, str]
    goals: tuple[Goal, ...]


class GoalTracker:
    """Distinct users per (canary, version) and per (canary, goal, version)."""

    def __init__(self) -> None:
        self._routes: dict[str, list[_Watch]] = {}
        self.watched: frozenset[str] = frozenset()  # the routes with goals (read per request)
        self._keys: dict[str, tuple[str, str]] = {}
        self._exposed: dict[tuple[str, str], set[str]] = {}
        self._converted: dict[tuple[str, str, str], set[str]] = {}

    def configure(self, canaries: Iterable[Canary], config: Config | None = None) -> None:
        """Track the goals of these canaries; counts of unchanged canaries are kept."""
        self._routes, self._keys = {}, {}
        for c in canaries:
            if c.goals:
                w = _Watch(c.name, (c.stable, c.canary), c.goals)
                self._routes.setdefault(c.route, []).append(w)
                if config is not None:
                    self._keys[c.route] = key_source(config, c.route)
        self.watched = frozenset(self._routes)

    def observe(
        self,
        route: str,
        version: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        client_ip: str,
    ) -> None:
        """The data plane's one call per answered request: finds the user key itself."""
        if route in self._routes:
            source = self._keys.get(route, ("header", "user-id"))
            key = user_key(source, headers, client_ip)
            self.record(route, version, method, target.split("?", 1)[0], key)

    def reset(self, canary: str) -> None:
        """A new rollout starts counting from zero."""
        self._exposed = {k: v for k, v in self._exposed.items() if k[0] != canary}
        self._converted = {k: v for k, v in self._converted.items() if k[0] != canary}

    def wants(self, route: str) -> bool:
        return route in self.watched

    def record(self, route: str, version: str, method: str, path: str, user_key: str) -> None:
        """One answered request of `route` served by `version` for the user `user_key`."""
        for w in self._routes.get(route, ()):
            if version not in w.versions or not user_key:
                continue
            _add(self._exposed.setdefault((w.canary, version), set()), user_key)
            for g in w.goals:
                if path == g.path and (not g.method or method.upper() == g.method.upper()):
                    key = (w.canary, g.name, version)
                    _add(self._converted.setdefault(key, set()), user_key)

    def results(self, canary: Canary, confidence: float = 95.0) -> list[dict[str, object]]:
        out = []
        for g in canary.goals:
            counts = {}
            for v in (canary.stable, canary.canary):
                n = len(self._exposed.get((canary.name, v), ()))
                conv = len(self._converted.get((canary.name, g.name, v), ()))
                counts[v] = (conv, n)
            out.append(goal_result(g.name, counts, confidence))
        return out


def _add(s: set[str], key: str) -> None:
    if len(s) < MAX_USERS:
        s.add(key)
