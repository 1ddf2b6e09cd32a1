"""Virtual-host precedence and the rewrite/redirect rules, table-tested without sockets."""

import pytest

from proxy.config.schema import MatchRule, Redirect, Rewrite, StringMatch
from proxy.routing.hosts import HostMap, host_key
from proxy.routing.rewrite import (
    compile_rewrite,
    matched_prefix,
    path_prefixes,
    redirect_location,
    replace_prefix,
)


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("shop.example.com", "shop.example.com"),
        ("SHOP.Example.COM", "shop.example.com"),
        ("shop.example.com:8080", "shop.example.com"),
        ("shop.example.com.", "shop.example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("", ""),
        (None, ""),
    ],
)
def test_host_key(header, key) -> None:
    assert host_key(header) == key


ROUTES = [
    ("any-1", ()),
    ("wild-short", ("*.example.com",)),
    ("exact", ("shop.example.com",)),
    ("wild-long", ("*.shop.example.com",)),
    ("exact-and-wild", ("api.example.com", "*.api.example.com")),
    ("any-2", ()),
]


@pytest.mark.parametrize(
    ("host", "order"),
    [
        # exact host first, then the wildcards that cover it (longer first), then host-less
        ("shop.example.com", ["exact", "wild-short", "any-1", "any-2"]),
        ("a.shop.example.com", ["wild-long", "wild-short", "any-1", "any-2"]),
        ("a.b.shop.example.com", ["wild-long", "wild-short", "any-1", "any-2"]),
        ("x.example.com", ["wild-short", "any-1", "any-2"]),
        ("api.example.com", ["exact-and-wild", "wild-short", "any-1", "any-2"]),
        ("v1.api.example.com", ["exact-and-wild", "wild-short", "any-1", "any-2"]),
        # a wildcard needs at least one label: the bare suffix is not covered
        ("example.com", ["any-1", "any-2"]),
        ("other.org", ["any-1", "any-2"]),
        ("", ["any-1", "any-2"]),
    ],
)
def test_host_precedence(host, order) -> None:
    hm = HostMap(ROUTES, lambda r: r[1])
    assert [name for name, _ in hm.lookup(host)] == order


def test_no_hostless_route_means_nothing_for_an_unknown_host() -> None:
    hm = HostMap([("a", ("a.com",))], lambda r: r[1])
    assert hm.lookup("b.com") == ()
    assert [n for n, _ in hm.lookup("a.com")] == ["a"]


def test_config_order_within_a_rank() -> None:
    hm = HostMap([("first", ("a.com",)), ("second", ("a.com",))], lambda r: r[1])
    assert [n for n, _ in hm.lookup("a.com")] == ["first", "second"]


def _prefix_rule(p: str) -> MatchRule:
    return MatchRule(path=StringMatch("prefix", p))


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "out"),
    [
        ("/old/a", "/old", "/new", "/new/a"),
        ("/old", "/old", "/new", "/new"),
        ("/old/a", "/old", "/", "/a"),
        ("/old", "/old", "/", "/"),
        ("/old/", "/old/", "/new", "/new/"),  # the trailing "/" stays, as the Gateway API
        ("/old/", "/old/", "/", "/"),
        ("/old/a", "/old/", "/new", "/new/a"),
        ("/older", "/old", "/new", "/newer"),  # prefix is a string prefix, as Istio's
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/a", "/", "/b", "/b/a"),
        ("/", "/", "/b", "/b"),
    ],
)
def test_replace_prefix(path, prefix, replacement, out) -> None:
    assert replace_prefix(path, prefix, replacement) == out


def test_matched_prefix_is_the_longest_the_path_starts_with() -> None:
    rules = (_prefix_rule("/a"), _prefix_rule("/a/b"), MatchRule(path=StringMatch("exact", "/x")))
    prefixes = path_prefixes(rules)
    assert matched_prefix(prefixes, "/a/b/c") == "/a/b"
    assert matched_prefix(prefixes, "/a/c") == "/a"
    assert matched_prefix(prefixes, "/x") == "/x"  # exact: the whole path
    assert path_prefixes(()) == ("/",)


@pytest.mark.parametrize(
    ("rewrite", "target", "out"),
    [
        (Rewrite(prefix="/new"), "/old/a?x=1", "/new/a?x=1"),
        (Rewrite(path="/exact"), "/old/a?x=1", "/exact?x=1"),
        (Rewrite(regex="^/v1/(.*)", substitution=r"/\1"), "/v1/users?id=2", "/users?id=2"),
        (Rewrite(regex="o", substitution="0"), "/foo", "/f00"),
        (Rewrite(host="shop.internal"), "/old/a", "/old/a"),
    ],
)
def test_rewrite_target(rewrite, target, out) -> None:
    assert compile_rewrite(rewrite).target(target, ("/old",)) == out


@pytest.mark.parametrize(
    ("rd", "scheme", "authority", "listener", "target", "location"),
    [
        (
            Redirect(scheme="https"),
            "http",
            "shop.com:8080",
            8080,
            "/a?b=1",
            "https://shop.com/a?b=1",
        ),
        (
            Redirect(scheme="https", port=8443),
            "http",
            "shop.com",
            80,
            "/a",
            "https://shop.com:8443/a",
        ),
        (Redirect(host="new.com"), "http", "shop.com:8080", 8080, "/a", "http://new.com:8080/a"),
        (Redirect(host="new.com"), "http", "shop.com", 8080, "/a", "http://new.com:8080/a"),
        (Redirect(host="new.com"), "http", "shop.com", 80, "/a", "http://new.com/a"),
        (Redirect(port=8081), "http", "shop.com:8080", 8080, "/", "http://shop.com:8081/"),
        (Redirect(path="/other"), "http", "Shop.com", 80, "/a?q", "http://shop.com/other?q"),
        (Redirect(prefix="/v2"), "http", "shop.com", 80, "/v1/a", "http://shop.com/v2/a"),
        (Redirect(scheme="http"), "https", "shop.com:8443", 8443, "/", "http://shop.com/"),
    ],
)
def test_redirect_location(rd, scheme, authority, listener, target, location) -> None:
    assert redirect_location(rd, scheme, authority, listener, target, ("/v1",)) == location
