"""Route selection and in-route subset choice of RoutingTable.decide (pure, no sockets)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.schema import (
    Config,
    Destination,
    Identity,
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


def test_overrides_replace_weights_and_missing_subsets_get_zero() -> None:
    t = build_table(cfg(DEFAULT), Overrides(weights={"default": {"v2": 3}}))
    assert t.weights() == {"default": {"v1": 0.0, "v2": 3.0}}
    assert {t.decide("GET", "/", {}, "", i / 10).subset for i in range(10)} == {"v2"}
    assert build_table(cfg(DEFAULT)).weights() == {"default": {"v1": 95.0, "v2": 5.0}}


def test_overrides_for_unknown_route_or_subset_are_ignored() -> None:
    ov = Overrides(weights={"gone": {"v1": 1}, "default": {"v1": 1, "v9": 5}})
    assert build_table(cfg(DEFAULT), ov).weights() == {"default": {"v1": 1.0, "v2": 0.0}}


def test_bad_override_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="weight"):
        build_table(cfg(DEFAULT), Overrides(weights={"default": {"v1": -5}}))


HASHED = Route(
    "default", (Destination("v1", 90), Destination("v2", 10)), split=Split("header", "User-Id")
)


def test_hash_split_by_header_is_deterministic() -> None:
    t = build_table(cfg(HASHED))
    # golden: bucket("default:u28") = 9630 -> v2 at 90/10; "user-1" = 5124 -> v1
    for rnd in (0.0, 0.5, 0.99):
        d = t.decide("GET", "/", {"user-id": "u28"}, "", rnd)
        assert (d.subset, d.reason) == ("v2", "hash")
        assert t.decide("GET", "/", {"user-id": "user-1"}, "", rnd).subset == "v1"


def test_hash_split_missing_key_falls_back_to_random() -> None:
    t = build_table(cfg(HASHED))
    assert t.decide("GET", "/", {}, "", 0.95).subset == "v2"
    assert t.decide("GET", "/", {}, "", 0.10).reason == "weights"


def test_hash_split_by_cookie_and_source_ip() -> None:
    by_cookie = Route("default", HASHED.destinations, split=Split("cookie", "uid"))
    t = build_table(cfg(by_cookie))
    assert t.decide("GET", "/", {"cookie": "a=1; uid=u28"}, "", 0.0).subset == "v2"
    by_ip = Route("default", HASHED.destinations, split=Split("source_ip"))
    t = build_table(cfg(by_ip))
    d = t.decide("GET", "/", {}, "10.0.0.7", 0.99)  # bucket 4281 -> v1 whatever rnd says
    assert (d.subset, d.reason) == ("v1", "hash")


STICKY = Route("default", (Destination("v1", 50), Destination("v2", 50)), sticky=Sticky("ver", 60))
SET_V1 = "ver=v1; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
SET_V2 = "ver=v2; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"


def test_sticky_first_request_sets_cookie_to_the_picked_subset() -> None:
    t = build_table(cfg(STICKY))
    d = t.decide("GET", "/", {}, "", 0.7)
    assert (d.subset, d.set_cookie, d.reason) == ("v2", SET_V2, "weights")


def test_sticky_cookie_pins_and_is_not_set_again() -> None:
    t = build_table(cfg(STICKY))
    d = t.decide("GET", "/", {"cookie": "ver=v1"}, "", 0.99)
    assert (d.subset, d.set_cookie, d.reason) == ("v1", None, "sticky")


def test_sticky_rollback_to_zero_wins_and_rewrites_cookie() -> None:
    t = build_table(cfg(STICKY), Overrides(weights={"default": {"v1": 100, "v2": 0}}))
    d = t.decide("GET", "/", {"cookie": "ver=v2"}, "", 0.99)
    assert (d.subset, d.set_cookie, d.reason) == ("v1", SET_V1, "weights")


def test_sticky_unknown_value_is_ignored_and_overwritten() -> None:
    t = build_table(cfg(STICKY))
    d = t.decide("GET", "/", {"cookie": "ver=v9"}, "", 0.2)
    assert (d.subset, d.set_cookie) == ("v1", SET_V1)


def test_sticky_new_users_follow_weights_without_skew() -> None:
    t = build_table(cfg(STICKY), Overrides(weights={"default": {"v1": 80, "v2": 20}}))
    got = Counter(t.decide("GET", "/", {}, "", i / 1000).subset for i in range(1000))
    assert got == {"v1": 800, "v2": 200}


@settings(max_examples=200, deadline=None)
@given(
    w1=st.integers(0, 100),
    w2=st.integers(0, 100),
    pick=st.sampled_from(["v1", "v2"]),
    rnd=st.floats(0, 1, exclude_max=True),
)
def test_stickiness_property(w1: int, w2: int, pick: str, rnd: float) -> None:
    """With the cookie, the client stays on its subset while that subset's weight > 0."""
    t = build_table(cfg(STICKY), Overrides(weights={"default": {"v1": w1, "v2": w2}}))
    d = t.decide("GET", "/", {"cookie": f"ver={pick}"}, "", rnd)
    weight = {"v1": w1, "v2": w2}[pick]
    if weight > 0:
        assert (d.subset, d.set_cookie) == (pick, None)
    else:
        assert d.subset != pick
        assert d.set_cookie == (
            None if d.subset is None else {"v1": SET_V1, "v2": SET_V2}[d.subset]
        )


PREVIEW = Route("bg", (Destination("blue", 100), Destination("green", 0)), preview=Preview())


def test_preview_header_reaches_the_idle_subset() -> None:
    t = build_table(cfg(PREVIEW))
    d = t.decide("GET", "/", {"x-canary-preview": "1"}, "", 0.0)
    assert (d.subset, d.reason) == ("green", "preview")
    assert t.decide("GET", "/", {"x-canary-preview": "0"}, "", 0.0).subset == "blue"
    assert t.decide("GET", "/", {}, "", 0.99).subset == "blue"


def test_preview_without_idle_subset_splits_normally() -> None:
    ov = Overrides(weights={"bg": {"blue": 0, "green": 100}})
    d = build_table(cfg(PREVIEW), ov).decide("GET", "/", {"x-canary-preview": "1"}, "", 0.0)
    assert (d.subset, d.reason) == ("blue", "preview")
    both = Overrides(weights={"bg": {"blue": 1, "green": 1}})
    d = build_table(cfg(PREVIEW), both).decide("GET", "/", {"x-canary-preview": "1"}, "", 0.0)
    assert (d.subset, d.reason) == ("blue", "weights")


def test_canary_match_goes_first_even_at_weight_zero() -> None:
    ov = Overrides(
        weights={"default": {"v1": 100, "v2": 0}},
        canary_match={"default": ("v2", (hdr("x-beta", "exact", "yes"),))},
    )
    t = build_table(cfg(STICKY), ov)
    d = t.decide("GET", "/", {"x-beta": "yes", "cookie": "ver=v1"}, "", 0.0)
    assert (d.subset, d.reason, d.set_cookie) == ("v2", "canary_match", None)
    assert t.decide("GET", "/", {"x-beta": "no"}, "", 0.99).subset == "v1"


def test_mirror_percent_and_never_to_itself() -> None:
    r = Route("default", (Destination("v1", 1), Destination("v2", 0)), mirror=(Mirror("v2", 25),))
    t = build_table(cfg(r))
    mirrored = sum(
        t.decide("GET", "/", {}, "", i / 100_000).mirror == ("v2",) for i in range(100_000)
    )
    assert 24_000 <= mirrored <= 26_000
    self_route = Route("x", (Destination("v2", 1),), mirror=(Mirror("v2", 100),))
    assert build_table(cfg(self_route)).decide("GET", "/", {}, "", 0.0).mirror is None


def test_decision_is_hashable_and_route_carries_policies() -> None:
    t = build_table(cfg(TESTERS, DEFAULT))
    d = t.decide("GET", "/", {}, "", 0.0)
    assert d.route is t.route("default")
    assert d.route is not None and d.route.service == "default" and d.route.timeout == 15.0
    assert set(d.route.dest_headers) == {"v1", "v2"}
    assert {d.route: 1}[d.route] == 1


FULL = Route(
    "default",
    (Destination("v1", 1), Destination("v2", 1), Destination("v3", 1)),
    split=Split("header", "user-id"),
    sticky=Sticky("ver"),
)


@settings(max_examples=300, deadline=None)
@given(
    ws=st.lists(st.integers(0, 5), min_size=3, max_size=3),
    user=st.one_of(st.none(), st.text(max_size=12)),
    cookie=st.one_of(st.none(), st.sampled_from(["v1", "v2", "v3", "v9", ""])),
    rnd=st.floats(0, 1, exclude_max=True),
)
def test_table_never_routes_to_weight_zero(
    ws: list[int], user: str | None, cookie: str | None, rnd: float
) -> None:
    """Through hash, sticky and random paths alike; explain agrees when it names a subset."""
    weights = dict(zip(("v1", "v2", "v3"), ws, strict=True))
    t = build_table(cfg(FULL), Overrides(weights={"default": weights}))
    headers = {} if user is None else {"user-id": user}
    if cookie is not None:
        headers["cookie"] = f"ver={cookie}"
    d = t.decide("GET", "/", headers, "", rnd)
    if sum(ws) == 0:
        assert d.subset is None
        return
    assert d.subset is not None and weights[d.subset] > 0
    ans = t.explain("GET", "/", headers, {}, "")
    if ans["subset"] is not None:
        assert (ans["subset"], ans["reason"]) == (d.subset, d.reason)
