"""BuildCache and iter_build_table: rebuilds reuse what did not change, and decide the same."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.config.schema import Config, Destination, Identity, MatchRule, Route, StringMatch
from proxy.config.schema import Upstream as Up
from proxy.routing.table import BuildCache, Overrides, build_table, iter_build_table


def hdr(name: str, kind: str, value: str) -> MatchRule:
    return MatchRule(headers=((name, StringMatch(kind, value)),))  # type: ignore[arg-type]


def tenant(i: int, value: str = "") -> Route:
    v = value or f"t{i}"
    rule = hdr("x-tenant", "regex", f"^{v}(-[a-z]+)?$") if i % 2 else hdr("x-tenant", "exact", v)
    return Route(f"r{i}", (Destination("v1", 50), Destination("v2", 50)), match=(rule,))


def cfg(routes: list[Route], identity: Identity | None = None) -> Config:
    ups = (Up("v1", ("127.0.0.1:1",)), Up("v2", ("127.0.0.1:2",)))
    return Config(
        listen="127.0.0.1:0", upstreams=ups, routes=tuple(routes), identity=identity or Identity()
    )


ROUTES = [tenant(i) for i in range(40)] + [
    Route("users", (Destination("v2", 1),), match=(MatchRule(users=frozenset({"u1"})),)),
    Route("default", (Destination("v1", 95), Destination("v2", 5))),
]
REQUESTS = [
    {"x-tenant": "t3"},
    {"x-tenant": "t3-abc"},
    {"x-tenant": "t4"},
    {"x-tenant": "t4-abc"},  # exact route: no match, falls through
    {"x-user-id": "u1"},
    {"user-id": "u1"},
    {},
]


def decisions(table) -> list[tuple]:
    out = []
    for h in REQUESTS:
        for rnd in (0.0, 0.5, 0.97):
            d = table.decide("GET", "/", h, "10.0.0.1", rnd)
            out.append((d.route and d.route.name, d.subset, d.reason))
    return out


def test_weight_change_recompiles_no_matcher_and_reuses_other_routes() -> None:
    cache, config = BuildCache(), cfg(ROUTES)
    before = build_table(config, Overrides(), cache)
    after = build_table(config, Overrides({"r3": {"v1": 0, "v2": 100}}), cache)
    assert after.route("r3") is not before.route("r3")
    assert after.route("r3").rules is before.route("r3").rules  # type: ignore[union-attr]
    assert after.weights()["r3"] == {"v1": 0.0, "v2": 100.0}
    assert all(after.route(f"r{i}") is before.route(f"r{i}") for i in range(40) if i != 3)
    assert decisions(after) == decisions(build_table(config, after.overrides))


def test_reload_recompiles_only_changed_routes() -> None:
    cache = BuildCache()
    old = build_table(cfg(ROUTES), Overrides(), cache)
    routes = [dataclasses.replace(r) for r in ROUTES]  # equal values, new objects
    routes[5] = tenant(5, "t5-new")
    new = build_table(cfg(routes), Overrides(), cache)
    assert all(new.route(f"r{i}") is old.route(f"r{i}") for i in range(40) if i != 5)
    d = new.decide("GET", "/", {"x-tenant": "t5-new"}, "", 0.0)
    assert d.route is not None and d.route.name == "r5"
    assert new.decide("GET", "/", {"x-tenant": "t5"}, "", 0.0).route.name == "default"  # type: ignore[union-attr]


def test_identity_change_rebuilds_user_matchers() -> None:
    cache = BuildCache()
    build_table(cfg(ROUTES), Overrides(), cache)
    moved = build_table(cfg(ROUTES, Identity(user_header="user-id")), Overrides(), cache)
    assert moved.decide("GET", "/", {"user-id": "u1"}, "", 0.0).route.name == "users"  # type: ignore[union-attr]
    assert moved.decide("GET", "/", {"x-user-id": "u1"}, "", 0.0).route.name == "default"  # type: ignore[union-attr]


def test_cached_builds_decide_like_fresh_ones_through_a_series_of_changes() -> None:
    cache = BuildCache()
    steps = [
        (cfg(ROUTES), Overrides()),
        (cfg(ROUTES), Overrides({"default": {"v1": 50, "v2": 50}})),
        (cfg(ROUTES[::-1]), Overrides({"default": {"v1": 50, "v2": 50}})),
        (cfg(ROUTES), Overrides(canary_match={"default": ("v2", (hdr("x-tenant", "exact", ""),))})),
        (cfg(ROUTES[:10] + ROUTES[-1:]), Overrides({"r1": {"v2": 1}})),
        (cfg(ROUTES), Overrides()),
    ]
    for config, ov in steps:
        assert decisions(build_table(config, ov, cache)) == decisions(build_table(config, ov))


def test_cache_stays_bounded_by_the_tables_it_serves() -> None:
    cache, config = BuildCache(), cfg(ROUTES)
    for w in range(200):
        build_table(config, Overrides({f"r{i}": {"v1": w, "v2": 1} for i in range(40)}), cache)
    assert len(cache) <= 2 * len(ROUTES) + 64


def test_bad_weight_raises_and_the_cache_keeps_working() -> None:
    cache, config = BuildCache(), cfg(ROUTES)
    good = build_table(config, Overrides(), cache)
    with pytest.raises(ValueError, match="finite number"):
        build_table(config, Overrides({"r2": {"v1": float("nan"), "v2": 1}}), cache)
    assert decisions(build_table(config, Overrides(), cache)) == decisions(good)


def test_stepwise_build_yields_per_route_and_equals_build_table() -> None:
    config = cfg(ROUTES)
    steps = iter_build_table(config, Overrides())
    yields = 0
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as done:
            table = done.value
            break
    assert yields == len(ROUTES)
    assert decisions(table) == decisions(build_table(config))


def test_fork_builds_aside_without_touching_the_original() -> None:
    cache, config = BuildCache(), cfg(ROUTES)
    first = build_table(config, Overrides(), cache)
    fork = cache.fork()
    other = cfg(ROUTES, Identity(user_header="user-id"))
    build_table(other, Overrides(), fork)
    assert build_table(config, Overrides(), cache).route("users") is first.route("users")
