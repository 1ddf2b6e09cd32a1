"""Cost of one routing decision (`RoutingTable.decide`), in nanoseconds, no sockets.

    python benchmarks/bench_routing.py [--seconds 0.5]

The table has 10 routes: header, cookie, query, source_ip, region and path-regex routes,
a 100,000-user whitelist route, and a last catch-all route with the split under test.
Each scenario is one request shape; "fall through" requests check every earlier route.
The "header routes" scenarios use another table: 50 routes each matching one exact
`x-tenant` value (as the `header-routes` load scenario), then a catch-all.
Target: < 5 us per decision.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from proxy.config.schema import (
    Config,
    Destination,
    MatchRule,
    Mirror,
    Route,
    Split,
    Sticky,
    StringMatch,
    Upstream,
)
from proxy.routing.table import Overrides, RoutingTable, build_table

V1, V2 = Destination("v1", 90), Destination("v2", 10)


def _hdr(name: str, kind: str, value: str = "") -> tuple[str, StringMatch]:
    return (name, StringMatch(kind, value))  # type: ignore[arg-type]


# Route-shaped patterns: the first pair runs on `re`; the second pair has two unbounded
# quantifiers, which `proxy.routing.regex` sends to google-re2 (linear time, dearer per call).
RE_PATTERNS = ("/api/v[0-9]/admin/[a-z]+", ".*[02468]")
RE2_PATTERNS = ("/api/v[0-9]+/admin/.*", ".*(iPhone|Android).*")


def _routes(last: Route, regexes: tuple[str, str]) -> tuple[Route, ...]:
    users = frozenset(f"user-{i:06d}" for i in range(100_000))
    m = MatchRule
    return (
        Route("r0", (V2,), match=(m(headers=(_hdr("x-debug", "exact", "1"),)),)),
        Route("r1", (V2,), match=(m(cookies=(_hdr("beta_tester", "exact", "true"),)),)),
        Route("r2", (V2,), match=(m(path=StringMatch("regex", regexes[0])),)),
        Route("r3", (V2,), match=(m(headers=(_hdr("user-id", "regex", regexes[1]),)),)),
        Route("r4", (V2,), match=(m(region=frozenset({"beijing", "shanghai"})),)),
        Route("r5", (V2,), match=(m(users=users),)),
        Route("r6", (V2,), match=(m(query=(_hdr("canary", "present"),)),)),
        Route("r7", (V2,), match=(m(source_ip=("192.168.77.0/24",)),)),
        Route(
            "r8",
            (V2,),
            match=(m(path=StringMatch("prefix", "/internal"), method=frozenset({"POST"})),),
        ),
        last,
    )


def _config(last: Route, regexes: tuple[str, str] = RE_PATTERNS) -> Config:
    ups = (Upstream("v1", ("127.0.0.1:1",)), Upstream("v2", ("127.0.0.1:2",)))
    return Config(listen="127.0.0.1:0", upstreams=ups, routes=_routes(last, regexes))


BASE_HEADERS = {
    "host": "shop.example",
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
    "accept": "*/*",
    "user-id": "customer-123",
    "x-region": "hangzhou",
}

Case = tuple[str, RoutingTable, str, dict[str, str], str]
TENANTS = 50


def _tenant_table() -> RoutingTable:
    routes = tuple(
        Route(f"t{i}", (V2,), match=(MatchRule(headers=(_hdr("x-tenant", "exact", f"t-{i}"),)),))
        for i in range(TENANTS)
    )
    ups = (Upstream("v1", ("127.0.0.1:1",)), Upstream("v2", ("127.0.0.1:2",)))
    default = Route("default", (V1, V2))
    return build_table(Config(listen="127.0.0.1:0", upstreams=ups, routes=(*routes, default)))


def _cases() -> list[Case]:
    plain = build_table(_config(Route("default", (V1, V2))))
    hashed = build_table(_config(Route("default", (V1, V2), split=Split("header", "user-id"))))
    sticky = build_table(
        _config(Route("default", (V1, V2), sticky=Sticky("version"), mirror=Mirror("v2", 10)))
    )
    canary = build_table(
        _config(Route("default", (V1, V2))),
        Overrides(
            canary_match={"default": ("v2", (MatchRule(headers=(_hdr("x-ab", "present"),)),))}
        ),
    )
    with_re2 = build_table(_config(Route("default", (V1, V2)), RE2_PATTERNS))
    tenants = _tenant_table()
    last = f"t-{TENANTS - 1}"
    return [
        ("first route (header exact)", plain, "/", {**BASE_HEADERS, "x-debug": "1"}, "10.0.0.1"),
        (
            "whitelist user (6th route)",
            plain,
            "/",
            {**BASE_HEADERS, "user-id": "user-054321"},
            "10.0.0.1",
        ),
        ("fall through, random split", plain, "/api/v1/items?page=2", BASE_HEADERS, "10.0.0.1"),
        ("fall through, hash by header", hashed, "/api/v1/items", BASE_HEADERS, "10.0.0.1"),
        (
            "fall through, sticky cookie",
            sticky,
            "/",
            {**BASE_HEADERS, "cookie": "a=1; version=v2"},
            "10.0.0.1",
        ),
        (
            "fall through, sticky new user",
            sticky,
            "/",
            {**BASE_HEADERS, "cookie": "a=1"},
            "10.0.0.1",
        ),
        ("fall through, 2 RE2-engine regexes", with_re2, "/api/v1/items", BASE_HEADERS, "10.0.0.1"),
        ("fall through, new client ip each", plain, "/api/v1/items", BASE_HEADERS, "*"),
        ("fall through, canary match", canary, "/", {**BASE_HEADERS, "x-ab": "1"}, "10.0.0.1"),
        (
            "50 header routes, last matches",
            tenants,
            "/",
            {**BASE_HEADERS, "x-tenant": last},
            "10.0.0.1",
        ),
        ("50 header routes, fall through", tenants, "/", BASE_HEADERS, "10.0.0.1"),
    ]


def ns_per_decision(decide: Callable[..., object], args: tuple, budget: float) -> float:
    """Nanoseconds per call: the best of rounds of 1,000 calls within `budget` seconds
    (the best round is the least disturbed by other processes on the machine).
    An `ip` of "*" gives every call a client address never seen before."""
    method, target, headers, ip = args
    rnds = [random.random() for _ in range(1000)]
    fresh = (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(10**9))
    best, deadline = float("inf"), time.perf_counter() + budget
    while time.perf_counter() < deadline:
        ips = [next(fresh) for _ in rnds] if ip == "*" else [ip] * len(rnds)
        start = time.perf_counter()
        for r, a in zip(rnds, ips, strict=True):
            decide(method, target, headers, a, r)
        best = min(best, time.perf_counter() - start)
    return best / 1000 * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per scenario")
    opts = ap.parse_args()
    started = time.perf_counter()
    cases = _cases()
    print(f"built 6 tables (100,000 users) in {time.perf_counter() - started:.2f} s")
    print(f"{'scenario':34} {'ns/decision':>12}  result")
    for name, table, target, headers, ip in cases:
        d = table.decide("GET", target, headers, "10.0.0.1" if ip == "*" else ip, 0.5)
        ns = ns_per_decision(table.decide, ("GET", target, headers, ip), opts.seconds)
        route = d.route.name if d.route else "-"
        print(f"{name:34} {ns:12.0f}  {route}/{d.subset} ({d.reason})")


if __name__ == "__main__":
    main()
