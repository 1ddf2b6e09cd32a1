"""Match predicates, one table per kind: every row is (rule, request) -> expected."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from proxy.config.schema import Identity, MatchRule, StringMatch
from proxy.routing.match import (
    Request,
    compile_rule,
    compile_rules,
    first_match,
    parse_cookies,
    parse_ip,
    parse_query,
)


def sm(kind: str, value: str = "") -> StringMatch:
    return StringMatch(kind, value)  # type: ignore[arg-type]


def check(
    rule: MatchRule,
    target: str = "/",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    ip: str = "10.1.2.3",
    identity: Identity | None = None,
) -> bool:
    compiled = compile_rule(rule, identity or Identity())
    return compiled.matches(Request(method, target, headers or {}, ip))


PATH_CASES: list[tuple[StringMatch, str, bool]] = [
    (sm("exact", "/api"), "/api", True),
    (sm("exact", "/api"), "/api?x=1", True),  # the query is not part of the path
    (sm("exact", "/api"), "/api/", False),
    (sm("exact", "/api"), "/API", False),
    (sm("prefix", "/api"), "/api/v1/users", True),
    (sm("prefix", "/api"), "/apiary", True),  # string prefix, as Istio
    (sm("prefix", "/api"), "/ap", False),
    (sm("prefix", "/api"), "/x?/api", False),
    (sm("regex", "/users/[0-9]+"), "/users/42", True),
    (sm("regex", "/users/[0-9]+"), "/users/42/edit", False),  # full match, not search
    (sm("regex", "/users/[0-9]+"), "/x/users/42", False),
    (sm("regex", "/users/[0-9]+"), "/users/42?page=2", True),
    # absolute-form targets are matched as they come (the data plane owns that policy)
    (sm("prefix", "/api"), "http://evil.example/api/x", False),
]


@pytest.mark.parametrize(("m", "target", "want"), PATH_CASES)
def test_path(m: StringMatch, target: str, want: bool) -> None:
    assert check(MatchRule(path=m), target) is want


HEADER_CASES: list[tuple[StringMatch, dict[str, str], bool]] = [
    (sm("exact", "t1"), {"user-id": "t1"}, True),
    (sm("exact", "t1"), {"user-id": "t10"}, False),
    (sm("exact", "t1"), {}, False),
    (sm("exact", ""), {"user-id": ""}, True),
    (sm("prefix", "test-"), {"user-id": "test-007"}, True),
    (sm("prefix", "test-"), {"user-id": "prod-007"}, False),
    (sm("prefix", "test-"), {}, False),
    (sm("regex", ".*[02468]"), {"user-id": "u12"}, True),
    (sm("regex", ".*[02468]"), {"user-id": "u13"}, False),
    (sm("regex", ".*[02468]"), {}, False),
    (sm("present"), {"user-id": ""}, True),
    (sm("present"), {}, False),
    (sm("absent"), {}, True),
    (sm("absent"), {"user-id": "x"}, False),
]


@pytest.mark.parametrize(("m", "headers", "want"), HEADER_CASES)
def test_headers(m: StringMatch, headers: dict[str, str], want: bool) -> None:
    assert check(MatchRule(headers=(("user-id", m),)), headers=headers) is want


def test_header_names_in_rules_are_lower_cased() -> None:
    rule = MatchRule(headers=(("User-ID", sm("exact", "t1")),))
    assert check(rule, headers={"user-id": "t1"})


COOKIE_CASES: list[tuple[StringMatch, str | None, bool]] = [
    (sm("exact", "true"), "beta_tester=true", True),
    (sm("exact", "true"), "a=1; beta_tester=true; b=2", True),
    (sm("exact", "true"), "beta_tester=false", False),
    (sm("exact", "true"), "beta_tester_x=true", False),
    (sm("exact", "true"), None, False),
    (sm("exact", "true"), 'beta_tester="true"', True),  # quoted value (RFC 6265)
    (sm("present"), "beta_tester=", True),
    (sm("absent"), "other=1", True),
    (sm("regex", "t.*"), "beta_tester=tru", True),
]


@pytest.mark.parametrize(("m", "cookie", "want"), COOKIE_CASES)
def test_cookies(m: StringMatch, cookie: str | None, want: bool) -> None:
    headers = {"cookie": cookie} if cookie is not None else {}
    assert check(MatchRule(cookies=(("beta_tester", m),)), headers=headers) is want


QUERY_CASES: list[tuple[StringMatch, str, bool]] = [
    (sm("exact", "v2"), "/?version=v2", True),
    (sm("exact", "v2"), "/?a=1&version=v2", True),
    (sm("exact", "v2"), "/?version=v1&version=v2", False),  # the first occurrence counts
    (sm("exact", "a b"), "/?version=a%20b", True),  # percent-decoded
    (sm("exact", "v2"), "/", False),
    (sm("present"), "/?version", True),
    (sm("absent"), "/?x=1", True),
    (sm("prefix", "v"), "/?version=v9", True),
]


@pytest.mark.parametrize(("m", "target", "want"), QUERY_CASES)
def test_query(m: StringMatch, target: str, want: bool) -> None:
    assert check(MatchRule(query=(("version", m),)), target) is want


@pytest.mark.parametrize(
    ("method", "want"), [("GET", True), ("HEAD", True), ("POST", False), ("get", False)]
)
def test_method(method: str, want: bool) -> None:
    assert check(MatchRule(method=frozenset({"GET", "HEAD"})), method=method) is want


IP_CASES: list[tuple[tuple[str, ...], str, bool]] = [
    (("10.0.0.0/8",), "10.1.2.3", True),
    (("10.0.0.0/8",), "11.1.2.3", False),
    (("192.168.1.7/32", "10.0.0.0/8"), "192.168.1.7", True),
    (("10.0.0.0/8",), "::ffff:10.9.9.9", True),  # IPv4-mapped IPv6
    (("2001:db8::/32",), "2001:db8::1", True),
    (("2001:db8::/32",), "10.1.2.3", False),
    (("10.0.0.0/8",), "not-an-ip", False),
    (("10.0.0.0/8",), "", False),
    (("10.0.0.0/8",), "010.1.2.3", False),  # leading zeros are ambiguous: no match
    (("10.0.0.0/8",), "10.1.2.256", False),
    (("10.1.2.3",), "10.1.2.3", True),  # a bare address is a /32
    (("0.0.0.0/0",), "203.0.113.9", True),
    (("10.1.2.3/32",), "10.1.2.30", False),
    (("10.1.16.0/20",), "10.1.31.255", True),
    (("10.1.16.0/20",), "10.1.32.0", False),
    (("10.1.16.0/20",), "10.1.15.9", False),
    (("10.1.2.128/25",), "10.1.2.127", False),
    (("10.1.2.128/25",), "10.1.2.200", True),
    (("10.1.2.128/25",), "10.1.2.1280", False),
    (("128.0.0.0/1",), "200.1.1.1", True),
    (("128.0.0.0/1",), "127.1.1.1", False),
]


@pytest.mark.parametrize(("cidrs", "ip", "want"), IP_CASES)
def test_source_ip(cidrs: tuple[str, ...], ip: str, want: bool) -> None:
    assert check(MatchRule(source_ip=cidrs), ip=ip) is want


def test_source_ip_agrees_with_ipaddress_for_many_clients() -> None:
    """The text fast path and the bounded cache agree with `ipaddress` everywhere."""
    cidrs = ("10.0.0.0/16", "172.16.0.0/12", "192.168.7.64/27", "8.8.8.8/32")
    nets = [ipaddress.ip_network(c) for c in cidrs]
    rule = compile_rule(MatchRule(source_ip=cidrs), Identity())
    rng = random.Random(3)
    for _ in range(10_000):
        first = rng.choice([10, 172, 192, 8, rng.randrange(256)])
        ip = f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        if rng.random() < 0.3:
            ip = f"{first}.{rng.choice([0, 16, 31, 168])}.{rng.choice([0, 7, 8])}.{rng.randrange(256)}"
        want = any(ipaddress.ip_address(ip) in n for n in nets)
        assert rule.matches(Request("GET", "/", {}, ip)) is want, ip


def test_region_and_users_read_identity_headers() -> None:
    ident = Identity(region_header="X-Zone", user_header="X-Uid")
    region = MatchRule(region=frozenset({"beijing", "shanghai"}))
    assert check(region, headers={"x-zone": "beijing"}, identity=ident)
    assert not check(region, headers={"x-region": "beijing"}, identity=ident)
    assert not check(region, headers={"x-zone": "Beijing"}, identity=ident)
    users = MatchRule(users=frozenset(f"u{i}" for i in range(100_000)))
    assert check(users, headers={"x-uid": "u99999"}, identity=ident)
    assert not check(users, headers={"x-uid": "u100000"}, identity=ident)
    assert not check(users, headers={}, identity=ident)


def test_default_identity_headers() -> None:
    assert check(MatchRule(region=frozenset({"eu"})), headers={"x-region": "eu"})
    assert check(MatchRule(users=frozenset({"u1"})), headers={"user-id": "u1"})


def test_keys_inside_one_item_are_and() -> None:
    rule = MatchRule(
        path=sm("prefix", "/api"), method=frozenset({"GET"}), headers=(("x-beta", sm("present")),)
    )
    assert check(rule, "/api/x", {"x-beta": "1"})
    assert not check(rule, "/api/x", {})
    assert not check(rule, "/web", {"x-beta": "1"})
    assert not check(rule, "/api/x", {"x-beta": "1"}, method="POST")


def test_list_is_or_and_empty_rule_matches_all() -> None:
    rules = compile_rules(
        (MatchRule(headers=(("a", sm("present")),)), MatchRule(path=sm("exact", "/b"))),
        Identity(),
    )
    assert first_match(rules, Request("GET", "/b", {}, "")) == 1
    assert first_match(rules, Request("GET", "/x", {"a": "1"}, "")) == 0
    assert first_match(rules, Request("GET", "/x", {}, "")) == -1
    assert first_match((), Request("GET", "/x", {}, "")) == 0
    assert check(MatchRule(), "/anything")


def test_first_failure_names_the_condition() -> None:
    rule = compile_rule(
        MatchRule(path=sm("prefix", "/api"), headers=(("x", sm("exact", "1")),)), Identity()
    )
    assert rule.first_failure(Request("GET", "/api", {"x": "2"}, "")) == 'headers[x] exact "1"'
    assert rule.first_failure(Request("GET", "/api", {"x": "1"}, "")) is None


def test_cookies_and_query_parsed_only_when_read() -> None:
    req = Request("GET", "/?a=1", {"cookie": "k=v"}, "")
    check_rule = compile_rule(MatchRule(path=sm("prefix", "/")), Identity())
    assert check_rule.matches(req)
    assert req._c is None and req._q is None
    assert req.cookies() == {"k": "v"} and req.query() == {"a": "1"}


PARSE_COOKIE_CASES: list[tuple[str | None, dict[str, Any]]] = [
    (None, {}),
    ("", {}),
    ("a=1", {"a": "1"}),
    ("a=1; b=2;c=3", {"a": "1", "b": "2", "c": "3"}),
    ("a=1; a=2", {"a": "1"}),
    ("junk; a=1; =x", {"a": "1"}),
    ("a=x=y", {"a": "x=y"}),
]


@pytest.mark.parametrize(("header", "want"), PARSE_COOKIE_CASES)
def test_parse_cookies(header: str | None, want: dict[str, str]) -> None:
    assert parse_cookies(header) == want


def test_parse_query_and_ip() -> None:
    assert parse_query("a=1&b=&a=2&c") == {"a": "1", "b": "", "c": ""}
    assert str(parse_ip("::ffff:1.2.3.4")) == "1.2.3.4"
    assert parse_ip("300.1.1.1") is None


def test_bad_regex_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="lookahead"):
        compile_rule(MatchRule(path=sm("regex", "(?=a)b")), Identity())


def test_catastrophic_regex_stays_bounded() -> None:
    rule = MatchRule(headers=(("x", sm("regex", "(a+)+$")),))
    assert not check(rule, headers={"x": "a" * 40 + "!"})


def test_regex_checks_run_last() -> None:
    rule = MatchRule(
        path=sm("regex", "/a/.*"),
        headers=(("x", sm("exact", "1")),),
        method=frozenset({"GET"}),
    )
    labels = [label for label, _ in compile_rule(rule, Identity()).checks]
    assert labels == ["method in ['GET']", 'headers[x] exact "1"', 'path regex "/a/.*"']
