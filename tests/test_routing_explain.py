"""RoutingTable.explain: the same answer as decide, with the reasons spelled out."""

from __future__ import annotations

import json

from proxy.config.schema import (
    Config,
    Destination,
    MatchRule,
    Mirror,
    Preview,
    Route,
    Split,
    Sticky,
    StringMatch,
    Upstream,
)
from proxy.routing.table import Overrides, build_table

TESTERS = Route(
    "testers",
    (Destination("v2"),),
    match=(
        MatchRule(headers=(("user-id", StringMatch("exact", "t1")),)),
        MatchRule(path=StringMatch("prefix", "/beta"), method=frozenset({"GET"})),
    ),
)
DEFAULT = Route(
    "default",
    (Destination("v1", 90), Destination("v2", 10)),
    split=Split("header", "user-id"),
    sticky=Sticky("ver", 60),
    mirror=(Mirror("v2", 5),),
)
CONFIG = Config(
    listen="127.0.0.1:0",
    upstreams=(Upstream("v1", ("127.0.0.1:1",)), Upstream("v2", ("127.0.0.1:2",))),
    routes=(TESTERS, DEFAULT),
)


def test_explain_names_the_matched_item_and_conditions() -> None:
    ans = build_table(CONFIG).explain("GET", "/beta/x", {}, {}, "10.0.0.1")
    assert ans["route"] == "testers" and ans["subset"] == "v2"
    assert ans["matched"] == {"item": 1, "conditions": ["method in ['GET']", 'path prefix "/beta"']}
    assert ans["skipped"] == []


def test_explain_says_why_earlier_routes_failed_and_gives_the_hash() -> None:
    ans = build_table(CONFIG).explain("POST", "/beta", {"User-Id": "u28"}, {}, "10.0.0.1")
    assert ans["route"] == "default"
    assert ans["skipped"] == [
        {
            "route": "testers",
            "why": 'match[0]: headers[user-id] exact "t1" did not hold; '
            "match[1]: method in ['GET'] did not hold",
        }
    ]
    assert ans["split"]["key"] == "u28" and ans["split"]["bucket"] == 9630
    assert ans["split"]["buckets"] == {"v1": [0, 9000], "v2": [9000, 10000]}
    assert (ans["subset"], ans["reason"]) == ("v2", "hash")
    assert ans["sticky"]["set_cookie"] == "ver=v2; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
    assert ans["mirror"] == [{"to": "v2", "percent": 5}]
    json.dumps(ans)


def test_explain_random_split_gives_probabilities_not_a_draw() -> None:
    ans = build_table(CONFIG).explain("GET", "/", {}, {}, "")
    assert ans["subset"] is None and ans["reason"] == "weights"
    assert ans["probabilities"] == {"v1": 0.9, "v2": 0.1}
    assert ans["split"]["note"] == "key missing: random split by weights"


def test_explain_sticky_cookie_from_the_cookies_argument() -> None:
    table = build_table(CONFIG)
    ans = table.explain("GET", "/", {"user-id": "u28"}, {"ver": "v1"}, "")
    assert (ans["subset"], ans["reason"], ans["sticky"]["set_cookie"]) == ("v1", "sticky", None)
    ov = Overrides(weights={"default": {"v1": 0, "v2": 1}})
    ans = build_table(CONFIG, ov).explain("GET", "/", {"cookie": "ver=v1"}, {}, "")
    assert ans["sticky"]["note"] == "weight 0: cookie overridden"
    assert ans["subset"] == "v2"


def test_explain_agrees_with_decide_when_deterministic() -> None:
    route = Route(
        "default",
        (Destination("blue", 100), Destination("green", 0)),
        split=Split("header", "user-id"),
        preview=Preview(),
    )
    cfg = Config(listen="127.0.0.1:0", upstreams=(), routes=(route,))
    ov = Overrides(canary_match={"default": ("green", (MatchRule(users=frozenset({"u1"})),))})
    table = build_table(cfg, ov)
    cases = [
        {"user-id": "u1"},
        {"user-id": "u2"},
        {"user-id": "u2", "x-canary-preview": "1"},
    ]
    for headers in cases:
        d = table.decide("GET", "/", headers, "", 0.5)
        ans = table.explain("GET", "/", headers, {}, "")
        assert (ans["subset"], ans["reason"]) == (d.subset, d.reason)


def test_explain_no_route() -> None:
    cfg = Config(listen="127.0.0.1:0", upstreams=(), routes=(TESTERS,))
    ans = build_table(cfg).explain("GET", "/", {}, {}, "")
    assert ans["route"] is None and ans["reason"] == "no_route" and len(ans["skipped"]) == 1
