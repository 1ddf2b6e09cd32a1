"""Routing state that is not in the config file, kept across restarts.

Files in the state dir (default ./.canaryproxy/), each written atomically
(temp file, fsync, rename, fsync of the directory) so a crash leaves the old or the
new version, never half of one:

- `revisions.json`: every change of routing state, numbered from 1
  `{"revision", "time", "cause", "weights", "canary_match"}`.
- `routing.json`: the overrides in force: API/canary weights, canary matches, and the
  file's own weights per route when they were set, to tell when the file changed them.
- `canary-<name>.json`: one record per canary, owned by the canary runner.

Overrides rule: weights set through the API (or a canary, or undo) win over the
file until the file itself changes that route's weights; then the file wins.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.config.schema import Config, MatchRule, StringMatch

Weights = dict[str, dict[str, float]]
CanaryMatch = dict[str, tuple[str, tuple[MatchRule, ...]]]
MAX_REVISIONS = 1000
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def atomic_write_json(path: str, data: Any) -> None:
    """Write JSON so readers see the old or the new file, also after a power cut."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# -- match rules <-> JSON ------------------------------------------------------------


def _sm_out(m: StringMatch | None) -> dict | None:
    return None if m is None else {"kind": m.kind, "value": m.value}


def _sm_in(d: Mapping | None) -> StringMatch | None:
    return None if d is None else StringMatch(d["kind"], d.get("value", ""))


def _pairs_out(pairs: tuple[tuple[str, StringMatch], ...]) -> list:
    return [[k, _sm_out(v)] for k, v in pairs]


def _pairs_in(pairs: list) -> tuple[tuple[str, StringMatch], ...]:
    return tuple((k, StringMatch(v["kind"], v.get("value", ""))) for k, v in pairs)


def rule_to_json(r: MatchRule) -> dict:
    return {
        "path": _sm_out(r.path),
        "method": sorted(r.method) if r.method is not None else None,
        "headers": _pairs_out(r.headers),
        "cookies": _pairs_out(r.cookies),
        "query": _pairs_out(r.query),
        "source_ip": list(r.source_ip),
        "region": sorted(r.region) if r.region is not None else None,
        "users": sorted(r.users) if r.users is not None else None,
    }


def _opt_set(v: list | None) -> frozenset[str] | None:
    return frozenset(v) if v is not None else None


def rule_from_json(d: Mapping) -> MatchRule:
    return MatchRule(
        path=_sm_in(d.get("path")),
        method=_opt_set(d.get("method")),
        headers=_pairs_in(d.get("headers", [])),
        cookies=_pairs_in(d.get("cookies", [])),
        query=_pairs_in(d.get("query", [])),
        source_ip=tuple(d.get("source_ip", [])),
        region=_opt_set(d.get("region")),
        users=_opt_set(d.get("users")),
    )


def match_to_json(m: Mapping[str, tuple[str, tuple[MatchRule, ...]]]) -> dict:
    return {
        route: [subset, [rule_to_json(r) for r in rules]] for route, (subset, rules) in m.items()
    }


def match_from_json(d: Mapping | None) -> CanaryMatch:
    out: CanaryMatch = {}
    for route, (subset, rules) in (d or {}).items():
        out[route] = (subset, tuple(rule_from_json(r) for r in rules))
    return out


# -- overrides (pure) ----------------------------------------------------------------


def file_weights(config: Config) -> Weights:
    """The weights each route has in the file itself."""
    return {r.name: {d.subset: float(d.weight) for d in r.destinations} for r in config.routes}


@dataclass
class RoutingState:
    """Overrides in force plus the file weights seen when each override was set."""

    weights: Weights = field(default_factory=dict)
    canary_match: CanaryMatch = field(default_factory=dict)
    seen_file: Weights = field(default_factory=dict)


def reconcile(state: RoutingState, config: Config) -> RoutingState:
    """Drop overrides the new file invalidates: a route gone, a subset gone, or the
    file's own weights for that route changed since the override was set."""
    now = file_weights(config)
    weights: Weights = {}
    for route, w in state.weights.items():
        if route not in now or state.seen_file.get(route) != now[route]:
            continue
        if all(s in now[route] for s in w):
            weights[route] = dict(w)
    matches = {
        route: (subset, rules)
        for route, (subset, rules) in state.canary_match.items()
        if route in now and config.upstream(subset) is not None
    }
    return RoutingState(weights, matches, now)


# -- the store -----------------------------------------------------------------------


class StateStore:
    """Revisions, overrides and canary records in one directory."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._revisions: list[dict] = _read_json(self._path("revisions.json")) or []

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # revisions

    def record(
        self,
        cause: str,
        weights: Mapping[str, Mapping[str, float]],
        canary_match: Mapping | None = None,
    ) -> dict:
        """Append a numbered revision of the effective routing state and persist it."""
        rev = {
            "revision": self.head() + 1,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "cause": cause,
            "weights": {r: dict(w) for r, w in weights.items()},
            "canary_match": match_to_json(canary_match or {}),
        }
        self._revisions = [*self._revisions, rev][-MAX_REVISIONS:]
        atomic_write_json(self._path("revisions.json"), self._revisions)
        return rev

    def head(self) -> int:
        return self._revisions[-1]["revision"] if self._revisions else 0

    def history(self) -> list[dict]:
        return list(self._revisions)

    def get(self, n: int) -> dict | None:
        for rev in self._revisions:
            if rev["revision"] == n:
                return rev
        return None

    # overrides

    def save_routing(self, state: RoutingState) -> None:
        data = {
            "weights": state.weights,
            "canary_match": match_to_json(state.canary_match),
            "seen_file": state.seen_file,
        }
        atomic_write_json(self._path("routing.json"), data)

    def load_routing(self) -> RoutingState:
        d = _read_json(self._path("routing.json")) or {}
        return RoutingState(
            {r: dict(w) for r, w in d.get("weights", {}).items()},
            match_from_json(d.get("canary_match")),
            {r: dict(w) for r, w in d.get("seen_file", {}).items()},
        )

    # canary records

    def _canary_path(self, name: str) -> str:
        if not _SAFE_NAME.fullmatch(name):
            raise ValueError(f"canary name {name!r} is not usable as a file name")
        return self._path(f"canary-{name}.json")

    def save_canary_state(self, name: str, state: dict) -> None:
        atomic_write_json(self._canary_path(name), state)

    def load_canary_state(self, name: str) -> dict | None:
        data = _read_json(self._canary_path(name))
        return data if isinstance(data, dict) else None
