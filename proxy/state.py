"""Routing state that is not in the config file, kept across restarts.

Files in the state dir (default ./.canaryproxy/). The JSON files are written atomically
(temp file, fsync, rename, fsync of the directory) so a crash leaves the old or the
new version, never half of one; all writes run in order on one background thread:

- `revisions.jsonl`: every change of routing state, numbered from 1, one JSON object
  a line `{"revision", "time", "cause", "weights", "canary_match"}`; appended and
  fsynced, rewritten atomically when it holds twice the revisions kept.
- `routing.json`: the overrides in force: API/canary weights, canary matches, and the
  file's own weights per route when they were set, to tell when the file changed them.
- `canary-<name>.json`: one record per canary, owned by the canary runner.

Overrides rule: weights set through the API (or a canary, or undo) win over the
file until the file itself changes that route's weights; then the file wins.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.config.schema import Config, MatchRule, StringMatch

Weights = dict[str, dict[str, float]]
CanaryMatch = dict[str, tuple[str, tuple[MatchRule, ...]]]
MAX_REVISIONS = 1000
REVISIONS, ROUTING = "revisions.jsonl", "routing.json"
log = logging.getLogger(__name__)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def atomic_write_text(path: str, text: str) -> None:
    """Write a file so readers see the old or the new content, also after a power cut."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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


def with_canary_route(
    state: RoutingState,
    config: Config,
    route: str,
    weights: Mapping[str, float] | None,
    match: tuple[str, tuple[MatchRule, ...]] | None,
) -> RoutingState:
    """`state` with a canary's step on `route`: its weights (None: unchanged) and its match
    (None: cleared)."""
    new_weights = dict(state.weights)
    if weights is not None:
        new_weights[route] = dict(weights)
    new_match = dict(state.canary_match)
    if match is None:
        new_match.pop(route, None)
    else:
        new_match[route] = match
    return RoutingState(new_weights, new_match, file_weights(config))


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


class _Writer:
    """One background thread that performs file writes in submission order.

    fsync takes milliseconds (tens on a busy disk); done on the event loop it would
    stall every proxied request. Callers get a Future to wait for durability when
    they must (the admin API answers only after its change is on disk).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")

    def submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        fut = self._pool.submit(fn, *args)
        fut.add_done_callback(_log_write_error)
        return fut

    def flush(self) -> Future[None]:
        """Done when every write submitted so far is done."""
        return self._pool.submit(lambda: None)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _log_write_error(fut: Future[None]) -> None:
    exc = fut.exception()
    if exc is not None:
        log.error("writing the state dir failed: %s", exc)


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_revisions(path: str) -> list[dict]:
    """One JSON object per line; a torn last line (crash mid-append) is skipped."""
    out: list[dict] = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    log.warning("%s: skipping an unreadable revision line", path)
    except FileNotFoundError:
        pass
    return out[-MAX_REVISIONS:]


class StateStore:
    """Revisions, overrides and canary records in one directory.

    Reads happen at construction; every change is applied in memory at once and
    written by the background writer, in order. `flush()` waits for the disk.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self._revisions: list[dict] = _read_revisions(self._path(REVISIONS))
        self._lines = len(self._revisions)
        self._writer = _Writer()
        self._canary_cache: dict[str, dict] = {}  # written but maybe not yet on disk

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def flush(self) -> Future[None]:
        return self._writer.flush()

    def close(self) -> None:
        """Finish every pending write; the store is unusable afterwards."""
        self._writer.close()

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
        self._lines += 1
        if self._lines > 2 * MAX_REVISIONS:  # compact: rewrite only the kept revisions
            text = "".join(json.dumps(r) + "\n" for r in self._revisions)
            self._writer.submit(atomic_write_text, self._path(REVISIONS), text)
            self._lines = len(self._revisions)
        else:
            self._writer.submit(_append_line, self._path(REVISIONS), json.dumps(rev))
        return rev

    def head(self) -> int:
        return int(self._revisions[-1]["revision"]) if self._revisions else 0

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
        self._writer.submit(atomic_write_text, self._path(ROUTING), json.dumps(data))

    def load_routing(self) -> RoutingState:
        d = _read_json(self._path(ROUTING)) or {}
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
        text = json.dumps(state)
        self._canary_cache[name] = json.loads(text)  # a copy: the caller may mutate `state`
        self._writer.submit(atomic_write_text, self._canary_path(name), text)

    def load_canary_state(self, name: str) -> dict | None:
        if name in self._canary_cache:
            return self._canary_cache[name]
        data = _read_json(self._canary_path(name))
        return data if isinstance(data, dict) else None
