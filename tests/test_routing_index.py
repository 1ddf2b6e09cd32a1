"""The exact-header index of RoutingTable.decide: it picks exactly what a scan in table order
picks (first match wins), for indexed, non-indexed and mixed tables (pure, no sockets)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import (
    Config,
    Destination,
    MatchRule,
    Route,
    Split,
    StringMatch,
    Upstream,
)
from proxy.routing.match import Request, exact_header_keys, first_match
from proxy.routing.table import MIN_INDEXED, Decision, Overrides, RoutingTable, build_table, choose


def cfg(*routes: Route) -> Config:
    ups = (Upstream("v1", ("127.0.0.1:1",)), Upstream("v2", ("127.0.0.1:2",)))
    return Config(listen="127.0.0.1:0", upstreams=ups, routes=routes)


def exact(name: str, value: str, **other: object) -> MatchRule:
    return MatchRule(headers=((name, StringMatch("exact", value)),), **other)  # type: ignore[arg-type]


def hdr(name: str, kind: str, value: str = "") -> MatchRule:
    return MatchRule(headers=((name, StringMatch(kind, value)),))  # type: ignore[arg-type]


def route(name: str, *match: MatchRule, split: Split | None = None) -> Route:
    dests = (Destination("v1", 50), Destination("v2", 50))
    return Route(name, dests, match=match, split=split or Split())


def linear(table: RoutingTable, method: str, headers: Mapping[str, str], rnd: float) -> Decision:
    """Reference: every route's match items tried in table order, no index, no flattening."""
    req = Request(method, "/x", headers, "10.0.0.1")
    for cr in table.routes:
        if first_match(cr.rules, req) >= 0:
            return choose(cr, req, rnd)
    return Decision(None, None, None, None, "no_route")


def outcome(d: Decision) -> tuple:
    return (d.route and d.route.name, d.subset, d.set_cookie, d.mirror, d.reason)


def test_index_keys_only_for_pure_exact_header_items() -> None:
    assert exact_header_keys((exact("X-Tenant", "a"), exact("y", ""))) == (
        ("x-tenant", "a"),
        ("y", ""),
    )
    assert exact_header_keys((exact("x", "a", method=frozenset()),)) == (("x", "a"),)
    assert exact_header_keys(()) is None  # matches every request
    assert exact_header_keys((exact("x", "a"), hdr("x", "prefix", "a"))) is None
    assert exact_header_keys((exact("x", "a", method=frozenset({"GET"})),)) is None
    assert exact_header_keys((exact("x", "a", path=StringMatch("prefix", "/")),)) is None
    two = MatchRule(headers=(("x", StringMatch("exact", "a")), ("y", StringMatch("exact", "b"))))
    assert exact_header_keys((two,)) is None


TABLE = (
    route("t1", exact("x-tenant", "t1")),
    route("dup-t1", exact("x-tenant", "t1")),  # same key later: never reached by it
    route("beta-prefix", hdr("x-tenant", "prefix", "beta")),
    route("beta-exact", exact("x-tenant", "beta-1")),  # shadowed by the prefix route above
    route("either", exact("X-Canary", "on"), exact("x-tenant", "t9")),  # OR of two keys
    route("post-only", exact("x-tenant", "t5", method=frozenset({"POST"}))),
    route("t5", exact("x-tenant", "t5")),
    route("empty", exact("x-tenant", "")),
    route("debug-present", hdr("x-debug", "present")),
    route("t7", exact("x-tenant", "t7")),
    route("default"),
    route("after-default", exact("x-tenant", "t8")),  # unreachable: default matches all
)
CASES = [
    ("GET", {"x-tenant": "t1"}, "t1"),
    ("GET", {"x-tenant": "beta-1"}, "beta-prefix"),
    ("GET", {"x-tenant": "t9"}, "either"),
    ("GET", {"x-canary": "on", "x-tenant": "t7"}, "either"),
    ("POST", {"x-tenant": "t5"}, "post-only"),
    ("GET", {"x-tenant": "t5"}, "t5"),
    ("GET", {"x-tenant": ""}, "empty"),
    ("GET", {"x-debug": "1", "x-tenant": "t7"}, "debug-present"),
    ("GET", {"x-debug": "1", "x-tenant": "t1"}, "t1"),
    ("GET", {"x-tenant": "t7"}, "t7"),
    ("GET", {"x-tenant": "t8"}, "default"),
    ("GET", {"x-tenant": "T1"}, "default"),  # values are case-sensitive
    ("GET", {}, "default"),
]


def test_index_built_from_enough_exact_routes() -> None:
    assert build_table(cfg(*TABLE)).scan(None).index  # the cases below go through the lookup
    few = [route(f"r{i}", exact("x", str(i))) for i in range(MIN_INDEXED - 1)]
    assert not build_table(cfg(*few)).scan(None).index  # a plain scan is as cheap
    assert build_table(cfg(*few, route("r", exact("y", "1")))).scan(None).index


@pytest.mark.parametrize(("method", "headers", "want"), CASES)
def test_table_cases_match_linear_scan(method: str, headers: dict[str, str], want: str) -> None:
    table = build_table(cfg(*TABLE))
    for rnd in (0.0, 0.49, 0.5, 0.99):
        d = table.decide(method, "/x", headers, "10.0.0.1", rnd)
        assert d.route is not None and d.route.name == want
        assert outcome(d) == outcome(linear(table, method, headers, rnd))
        assert table.explain(method, "/x", headers)["route"] == want


def test_no_catch_all_gives_no_route_when_nothing_indexed_holds() -> None:
    table = build_table(cfg(route("a", exact("x", "1")), route("b", hdr("y", "present"))))
    assert table.decide("GET", "/", {"x": "2"}, "", 0.5).reason == "no_route"
    assert table.decide("GET", "/", {"x": "1", "y": "z"}, "", 0.5).route.name == "a"  # type: ignore[union-attr]


def test_indexed_route_keeps_canary_match_and_weights() -> None:
    config = cfg(route("t1", exact("x-tenant", "t1")), route("default"))
    ov = Overrides(
        weights={"t1": {"v1": 0, "v2": 100}},
        canary_match={"t1": ("v1", (hdr("x-ab", "present"),))},
    )
    table = build_table(config, ov)
    assert table.decide("GET", "/", {"x-tenant": "t1"}, "", 0.1).subset == "v2"
    d = table.decide("GET", "/", {"x-tenant": "t1", "x-ab": "1"}, "", 0.1)
    assert (d.subset, d.reason) == ("v1", "canary_match")


NAMES = ("a", "b", "X-C")
VALUES = ("1", "2", "")


@st.composite
def match_items(draw: st.DrawFn) -> MatchRule:
    name, value = draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))
    kinds = ("exact",) * 12 + ("prefix", "present", "absent", "get", "path")
    shape = draw(st.sampled_from(kinds))
    if shape in ("prefix", "present", "absent"):
        return hdr(name, shape, value)
    if shape == "get":
        return exact(name, value, method=frozenset({"GET"}))
    if shape == "path":
        return exact(name, value, path=StringMatch("prefix", draw(st.sampled_from(("/x", "/y")))))
    return exact(name, value)


@st.composite
def tables(draw: st.DrawFn) -> RoutingTable:
    n = draw(st.integers(1, 16))  # index built from MIN_INDEXED exact routes
    routes = []
    for i in range(n):
        items = draw(
            st.lists(match_items(), min_size=0 if draw(st.integers(0, 5)) == 0 else 1, max_size=3)
        )
        by = draw(st.sampled_from((Split(), Split("header", "a"))))
        routes.append(route(f"r{i}", *items, split=by))
    return build_table(cfg(*routes))


requests = st.tuples(
    st.sampled_from(("GET", "POST")),
    st.dictionaries(st.sampled_from(("a", "b", "x-c", "d")), st.sampled_from((*VALUES, "3"))),
    st.floats(0, 1, exclude_max=True),
)


@settings(max_examples=300, deadline=None)
@given(tables(), st.lists(requests, min_size=1, max_size=8))
def test_decide_equals_linear_scan(
    table: RoutingTable, reqs: list[tuple[str, dict[str, str], float]]
) -> None:
    for method, headers, rnd in reqs:
        got = table.decide(method, "/x", headers, "10.0.0.1", rnd)
        assert outcome(got) == outcome(linear(table, method, headers, rnd))
