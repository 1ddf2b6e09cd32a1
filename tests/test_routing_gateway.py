"""Gateway routing through the real table (SPEC §6): hosts, listeners, redirect and
direct-response routes, mirror lists and failover order. No sockets."""

from proxy.config.validate import validate
from proxy.routing.table import build_table

UPS = {"v1": {"endpoints": ["127.0.0.1:1"]}, "v2": {"endpoints": ["127.0.0.1:2"]},
       "v3": {"endpoints": ["127.0.0.1:3"]}}  # fmt: skip


def table(routes, **top):
    if "listeners" not in top:
        top["listen"] = "127.0.0.1:0"
    config, errors = validate({"upstreams": UPS, "routes": routes, **top})
    assert not errors, errors
    return build_table(config)


def to(subset):
    return [{"destination": subset}]


def pick(t, host, path="/", listener="default"):
    d = t.decide("GET", path, {"host": host} if host is not None else {}, "", 0.5, listener)
    return d.route.name if d.route else None


def test_two_services_by_host_never_fall_into_each_other() -> None:
    t = table([
        {"name": "reviews", "hosts": ["reviews"], "route": to("v1")},
        {"name": "ratings", "hosts": ["ratings"], "route": to("v2")},
    ])  # fmt: skip
    assert pick(t, "ratings") == "ratings"
    assert pick(t, "reviews:9080") == "reviews"
    assert pick(t, "details") is None  # no host-less route: 404, not another service
    assert pick(t, None) is None


def test_host_is_case_insensitive_and_port_ignored() -> None:
    t = table([{"name": "shop", "hosts": ["shop.example.com"], "route": to("v1")}])
    for host in ("shop.example.com", "SHOP.example.com", "shop.example.com:8080",
                 "Shop.Example.Com."):  # fmt: skip
        assert pick(t, host) == "shop", host


def test_exact_beats_wildcard_beats_hostless_whatever_the_config_order() -> None:
    t = table([
        {"name": "any", "route": to("v1")},
        {"name": "wild", "hosts": ["*.example.com"], "route": to("v2")},
        {"name": "exact", "hosts": ["shop.example.com"], "route": to("v3")},
    ])  # fmt: skip
    assert pick(t, "shop.example.com") == "exact"
    assert pick(t, "api.example.com") == "wild"
    assert pick(t, "example.com") == "any"
    assert pick(t, "other.org") == "any"


def test_within_a_host_the_first_matching_route_wins_then_lower_ranks() -> None:
    t = table([
        {"name": "shop-api", "hosts": ["shop.example.com"],
         "match": [{"path": {"prefix": "/api"}}], "route": to("v2")},
        {"name": "any-static", "match": [{"path": {"prefix": "/static"}}], "route": to("v3")},
        {"name": "shop", "hosts": ["shop.example.com"],
         "match": [{"path": {"prefix": "/shop"}}], "route": to("v1")},
    ])  # fmt: skip
    assert pick(t, "shop.example.com", "/api/x") == "shop-api"
    assert pick(t, "shop.example.com", "/shop/x") == "shop"
    assert pick(t, "shop.example.com", "/static/a.css") == "any-static"
    assert pick(t, "shop.example.com", "/other") is None


def test_listeners_limit_which_requests_see_a_route() -> None:
    listeners = [
        {"name": "web", "listen": "127.0.0.1:0"},
        {"name": "admin", "listen": "127.0.0.2:0"},
    ]
    t = table(
        [{"name": "to-https", "listeners": ["web"], "redirect": {"scheme": "https"}},
         {"name": "app", "route": to("v1")}],
        listeners=listeners,
    )  # fmt: skip
    assert pick(t, "a", listener="web") == "to-https"
    assert pick(t, "a", listener="admin") == "app"


def test_redirect_and_direct_response_routes_answer_without_a_subset() -> None:
    t = table([
        {"name": "moved", "match": [{"path": {"prefix": "/old"}}],
         "redirect": {"prefix": "/new", "status": 301}},
        {"name": "teapot", "direct_response": {"status": 418, "body": "short and stout\n"}},
    ])  # fmt: skip
    d = t.decide("GET", "/old/a", {}, "", 0.5)
    assert (d.route.name, d.subset, d.reason) == ("moved", None, "redirect")
    assert d.route.redirect.status == 301
    d = t.decide("GET", "/x", {}, "", 0.5)
    assert (d.route.name, d.subset, d.reason) == ("teapot", None, "direct_response")
    assert d.route.direct.status == 418


def test_every_mirror_of_a_list_gets_its_percent() -> None:
    t = table([{"name": "r", "route": to("v1"),
                "mirror": [{"destination": "v2", "percent": 50}, {"destination": "v3"}]}])  # fmt: skip
    draws = [t.decide("GET", "/", {}, "", i / 10_000).mirror for i in range(10_000)]
    assert all(m is not None and "v3" in m for m in draws)
    assert 4_500 <= sum("v2" in m for m in draws) <= 5_500


def test_failover_order_is_the_other_live_destinations_heaviest_first() -> None:
    t = table([{"name": "r", "route": [{"destination": "v1", "weight": 10},
                                        {"destination": "v2", "weight": 80},
                                        {"destination": "v3", "weight": 0}]}])  # fmt: skip
    cr = t.route("r")
    assert cr.failover == {"v1": ("v2",), "v2": ("v1",), "v3": ("v2", "v1")}
    off = table([{"name": "r", "failover": "off", "route": [{"destination": "v1"},
                                                           {"destination": "v2"}]}])  # fmt: skip
    assert off.route("r").failover is None


def test_rewrite_is_compiled_with_the_routes_prefixes() -> None:
    t = table([{"name": "r", "match": [{"path": {"prefix": "/old"}}], "route": to("v1"),
                "rewrite": {"prefix": "/new", "host": "shop.internal"}}])  # fmt: skip
    cr = t.route("r")
    assert cr.rewrite.target("/old/a?b=1", cr.prefixes) == "/new/a?b=1"
    assert cr.rewrite.host == "shop.internal"


def test_explain_follows_the_host_order() -> None:
    t = table([
        {"name": "any", "route": to("v1")},
        {"name": "exact", "hosts": ["shop.example.com"], "route": to("v3")},
    ])  # fmt: skip
    assert t.explain("GET", "/", {"host": "shop.example.com"})["route"] == "exact"
    assert t.explain("GET", "/", {"host": "x"})["route"] == "any"
