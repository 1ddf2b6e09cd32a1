"""Route selection and in-route subset choice of RoutingTable.decide (pure, no sockets)."""

from __future__ import annotations

from proxy.config.schema import (
    Config,
    Destination,
    Identity,
    MatchRule,
    Route,
    StringMatch,
    Upstream,
)
from proxy.routing.table import Overrides, build_table


def cfg(*routes: Route, identity: Identity | None = None) -> Config:
    ups = (Upstream("v1", ("127.0.0.1:1",)), Upstream("v2", ("127.0.0.1:2",)))
    return Config(
        listen="127.0.0.1:0", upstreams=ups, routes=routes, identity=identity or Identity()
    )


def hdr(name: str, kind: str = "exact", value: str = "") -> MatchRule:
    return MatchRule(headers=((name, StringMatch(kind, value)),))  # type: ignore[arg-type]


V1 = Destination("v1", 1)
V2 = Destination("v2", 1)
TESTERS = Route("testers", (V2,), match=(hdr("user-id", "exact", "t1"),))
DEFAULT = Route("default", (Destination("v1", 95), Destination("v2", 5)))


def test_first_match_wins_and_fallthrough() -> None:
    t = build_table(cfg(TESTERS, DEFAULT))
    d = t.decide("GET", "/", {"user-id": "t1"}, "10.0.0.1", 0.0)
    assert (d.route and d.route.name, d.subset) == ("testers", "v2")
    d = t.decide("GET", "/", {"user-id": "t2"}, "10.0.0.1", 0.0)
    assert (d.route and d.route.name, d.subset, d.reason) == ("default", "v1", "weights")


def test_no_route_gives_none() -> None:
    d = build_table(cfg(TESTERS)).decide("GET", "/", {}, "", 0.5)
    assert d.route is None and d.subset is None and d.reason == "no_route"


def test_random_split_boundaries() -> None:
    t = build_table(cfg(DEFAULT))
    assert t.decide("GET", "/", {}, "", 0.0).subset == "v1"
    assert t.decide("GET", "/", {}, "", 0.9499).subset == "v1"
    assert t.decide("GET", "/", {}, "", 0.95).subset == "v2"
    assert t.decide("GET", "/", {}, "", 0.999999).subset == "v2"


def test_all_weights_zero_gives_route_without_subset() -> None:
    t = build_table(cfg(DEFAULT), Overrides(weights={"default": {"v1": 0, "v2": 0}}))
    d = t.decide("GET", "/", {}, "", 0.3)
    assert d.route is not None and d.subset is None and d.reason == "no_weight"
