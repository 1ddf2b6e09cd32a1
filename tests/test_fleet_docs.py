"""The fleet's pure rules, without etcd: the store URL, the documents and how a change of
routing state becomes puts and deletes, the fleet counters, the crash points' parsing, and
which parts of the fleet's config stay a replica's own."""

from __future__ import annotations

import pytest

from proxy.config.schema import MatchRule, StringMatch
from proxy.fleet import localize
from proxy.metrics_buckets import EMPTY, VersionSnapshot
from proxy.state import RoutingState
from proxy.store import crash
from proxy.store.counters import add, decode, encode, fleet_snapshot, members_of
from proxy.store.keys import (
    Doc,
    Keys,
    history,
    parse_store_url,
    route_docs,
    routing_changes,
    routing_of,
)
from tests.util_servers import config_from_yaml

K = Keys("shop")


@pytest.mark.parametrize(
    ("url", "endpoints", "cluster"),
    [
        ("etcd://127.0.0.1:2379/shop", ("127.0.0.1:2379",), "shop"),
        ("etcd://h1,h2:2380/prod-1", ("h1:2379", "h2:2380"), "prod-1"),
        ("etcd://a:1, b:2 /c.d/", ("a:1", "b:2"), "c.d"),
    ],
)
def test_store_urls(url: str, endpoints: tuple, cluster: str) -> None:
    u = parse_store_url(url)
    assert (u.endpoints, u.cluster) == (endpoints, cluster)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:2379/shop", "expected etcd://"),
        ("etcd://h:2379", "name the cluster"),
        ("etcd://h:2379/", "name the cluster"),
        ("etcd://h:2379/a/b", "name the cluster"),
        ("etcd://h:2379,,h2/shop", "an empty host"),
    ],
)
def test_bad_store_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_store_url(url)


def _snapshot(routing: RoutingState) -> dict[str, Doc]:
    return {K.weights(r): Doc(d, 5, 5) for r, d in route_docs(routing).items()}


RULE = MatchRule(headers=(("x-beta", StringMatch("exact", "1")),))


def test_routing_round_trips_through_its_documents() -> None:
    state = RoutingState(
        {"a": {"v1": 90.0, "v2": 10.0}},
        {"b": ("v2", (RULE,))},
        {"a": {"v1": 100.0, "v2": 0.0}, "b": {"v1": 100.0}},
    )
    assert routing_of(_snapshot(state), K) == state


def test_a_change_writes_only_the_routes_it_changes_and_deletes_what_is_gone() -> None:
    old = RoutingState(
        {"a": {"v1": 90.0}, "b": {"v1": 50.0}}, {}, {"a": {"v1": 1.0}, "b": {"v1": 1.0}}
    )
    new = RoutingState({"a": {"v1": 80.0}}, {}, {"a": {"v1": 1.0}})
    puts, deletes = routing_changes(_snapshot(old), K, new)
    assert [k for k, _ in puts] == [K.weights("a")]
    assert deletes == [K.weights("b")]
    assert routing_changes(_snapshot(new), K, new) == ([], [])


def test_history_is_in_revision_order_whatever_the_key_order() -> None:
    snap = {K.log(n): Doc({"revision": n}, n, n) for n in (10, 9, 100, 1)}
    assert [h["revision"] for h in history(snap, K)] == [1, 9, 10, 100]


def _snap(total: int, errors: int, fast: int) -> VersionSnapshot:
    buckets = tuple(
        (le, fast if i < len(EMPTY.buckets) - 1 else total)
        for i, (le, _) in enumerate(EMPTY.buckets)
    )
    return VersionSnapshot(total, errors, buckets, total * 0.01)


def test_fleet_counters_add_up_every_member() -> None:
    a, b = _snap(100, 5, 90), _snap(300, 0, 300)
    members = [
        {"replica": "r1", "boot": "x", "counters": encode({("shop", "v2"): a})},
        {"replica": "r2", "boot": "y", "counters": encode({("shop", "v2"): b})},
        {"replica": "r3", "boot": "z", "counters": {}},
    ]
    total = fleet_snapshot(members, "shop", "v2")
    assert (total.total, total.errors) == (400, 5)
    assert total == add(a, b)
    assert decode(members[0]["counters"], "shop", "v2") == a
    assert fleet_snapshot(members, "shop", "v1") == EMPTY
    assert members_of(members) == {("r1", "x"), ("r2", "y"), ("r3", "z")}


def test_crash_points_parse_and_are_off_without_the_variable() -> None:
    assert crash._points("before-step:3,after-step") == {"before-step": 3, "after-step": 1}
    assert crash._points("") == {}
    crash.at("before-step")  # not set in the test process: returns


def test_a_replica_keeps_its_own_addresses_from_the_fleet_config() -> None:
    fleet = config_from_yaml("""
listen: 0.0.0.0:8080
admin: {listen: 127.0.0.1:9901}
upstreams: {v1: {endpoints: ["10.0.0.1:80"]}}
routes: [{name: a, route: [{destination: v1}]}]
""")
    own = config_from_yaml("""
listen: 127.0.0.1:18080
admin: {listen: 127.0.0.1:19901}
upstreams: {v1: {endpoints: ["127.0.0.1:1"]}}
routes: [{name: a, route: [{destination: v1}]}]
""")
    mine = localize(fleet, own)
    assert (mine.listen, mine.admin.listen) == ("127.0.0.1:18080", "127.0.0.1:19901")
    assert mine.upstreams == fleet.upstreams  # everything else is the fleet's
    assert localize(own, own) == own
