"""The immutable routing table: `build_table(config, overrides)` then `decide(...)` per request.

Rules kept here (SPEC section 2):
- routes are tried in order, the first whose match list holds wins; no route -> route None;
- inside the route, the subset is picked by the first of these that applies:
  1. canary match (Overrides.canary_match): a request matching any rule goes to that subset;
  2. preview: a request carrying the route's preview header reaches the idle subset
     (the first with weight 0), if there is one;
  3. sticky cookie naming a subset whose weight is > 0 (a rollback to 0 always wins);
  4. split: hash of the key (`split.by`), or random when the key is missing or by=random;
- every weight 0 -> subset None (the data plane answers 503);
- sticky routes set the cookie whenever the picked subset differs from the cookie's value;
- mirror: each `route.mirror` destination for its `percent` % of requests, not to itself;
- hosts (SPEC §6, proxy.routing.hosts): a request only sees the routes its Host may reach,
  exact hosts first, then wildcards (longer first), then routes without hosts; listeners:
  a route with `listeners` is seen only by requests that came in on one of them;
- redirect and direct_response routes answer without a subset (Decision.reason says which).
Everything per route is precomputed at build time; `decide` only reads.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

from proxy.config.schema import (
    Config,
    Identity,
    MatchRule,
    Route,
)
from proxy.routing.explain import explain_request
from proxy.routing.hosts import HostMap, host_key
from proxy.routing.match import (
    CompiledRule,
    Request,
    compile_rules,
    exact_header_keys,
    rules_test,
)
from proxy.routing.overrides import Overrides as Overrides  # re-exported
from proxy.routing.rewrite import compile_rewrite, path_prefixes
from proxy.routing.route import CompiledRoute, Decision
from proxy.routing.scan import MIN_INDEXED, Scan, choose
from proxy.routing.split import (
    Weighted,
    build_weighted,
    check_weight,
    idle_subset,
    sticky_set_cookie,
)


def _effective_weights(route: Route, overrides: Overrides) -> tuple[float, ...]:
    ov = overrides.weights.get(route.name)
    if ov is None:
        return tuple(d.weight for d in route.destinations)
    return tuple(ov.get(d.subset, 0.0) for d in route.destinations)


def _split_key(route: Route) -> str:
    return route.split.name.lower() if route.split.by == "header" else route.split.name


def _failover(route: Route, weights: tuple[float, ...]) -> dict[str, tuple[str, ...]] | None:
    """subset -> the other live destinations, heaviest first (ties: config order)."""
    if route.failover == "off" or len(route.destinations) < 2:
        return None
    pairs = enumerate(zip(route.destinations, weights, strict=True))
    live = [(w, i, d.subset) for i, (d, w) in pairs if w > 0]
    live.sort(key=lambda t: (-t[0], t[1]))
    return {
        d.subset: tuple(sub for _, _, sub in live if sub != d.subset) for d in route.destinations
    }


def compile_route(
    route: Route, config: Config, overrides: Overrides, cache: BuildCache | None = None
) -> CompiledRoute:
    """Compile one route under the given overrides (regexes, weights, cookies)."""
    subsets = tuple(d.subset for d in route.destinations)
    weights = _effective_weights(route, overrides)
    wt = cache.weighted(subsets, weights) if cache else build_weighted(subsets, weights)
    sticky = route.sticky
    canary = overrides.canary_match.get(route.name)
    rules = cache.rules(route.match) if cache else compile_rules(route.match, config.identity)
    canary_rules = compile_rules(canary[1], config.identity) if canary else ()
    return CompiledRoute(
        name=route.name,
        service=route.service or route.name,
        timeout=route.timeout,
        retries=route.retries,
        fault=route.fault,
        max_body=route.max_body,
        headers=route.headers,
        dest_headers={d.subset: d.headers for d in route.destinations},
        route=route,
        rules=rules,
        weighted=wt,
        live=frozenset(s for s, w in zip(subsets, wt.weights, strict=True) if w > 0),
        split_by=route.split.by,
        split_key=_split_key(route),
        sticky_cookie=sticky.cookie if sticky else None,
        set_cookies={s: sticky_set_cookie(sticky.cookie, s, sticky.max_age) for s in subsets}
        if sticky
        else {},
        idle=idle_subset(wt),
        preview=(route.preview.header.lower(), route.preview.value) if route.preview else None,
        mirrors=tuple((m.destination, m.percent) for m in route.mirror),
        canary_subset=canary[0] if canary else None,
        canary_rules=canary_rules,
        test=rules_test(rules),
        canary_test=rules_test(canary_rules) if canary_rules else None,
        index_keys=exact_header_keys(route.match),
        decisions={},
        hosts=route.hosts,
        listeners=route.listeners,
        redirect=route.redirect,
        direct=route.direct_response,
        rewrite=compile_rewrite(route.rewrite) if route.rewrite else None,
        prefixes=path_prefixes(route.match),
        failover=_failover(route, wt.weights),
    )


def _hosts_of(cr: CompiledRoute) -> tuple[str, ...]:
    return cr.hosts


class RoutingTable:
    """Immutable after build: the data plane swaps whole tables, never edits one.

    Without `hosts` and `listeners` in the config, one scan serves every request (no Host
    is read); otherwise a scan per (listener, host group), chosen by two dict lookups."""

    __slots__ = ("config", "overrides", "routes", "_by_name", "_weights", "_one", "_by_listener")

    def __init__(self, config: Config, overrides: Overrides, routes: tuple[CompiledRoute, ...]):
        self.config = config
        self.overrides = overrides
        self.routes = routes
        self._by_name = {r.name: r for r in routes}
        self._weights: dict[str, dict[str, float]] | None = None
        by_listener = any(r.listeners for r in routes)
        by_host = any(r.hosts for r in routes)
        self._one = Scan(routes) if not (by_listener or by_host) else None
        self._by_listener: dict[str, HostMap[Scan]] = {}
        if self._one is None:
            names = [x.name for x in config.all_listeners()] if by_listener else ["*"]
            for name in names:
                seen = tuple(r for r in routes if not r.listeners or name in r.listeners)
                self._by_listener[name] = HostMap(seen, _hosts_of, Scan)

    def decide(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        client_ip: str,
        rnd: float,
        listener: str = "default",
    ) -> Decision:
        """Route and subset for one request; headers have lower-case names (`host` the
        Host header, or the absolute-form authority, which the data plane puts there)."""
        req = Request(method, target, headers, client_ip)
        one = self._one
        if one is not None:
            return one.decide(req, headers, rnd)
        return self.scan(headers.get("host"), listener).decide(req, headers, rnd)

    def scan(self, host: str | None, listener: str = "default") -> Scan:
        """The candidates a request with this Host on this listener may reach."""
        if self._one is not None:
            return self._one
        hosts = self._by_listener.get(listener) or self._by_listener.get("*")
        if hosts is None:
            return Scan(())
        return hosts.lookup(host_key(host))

    def route(self, name: str) -> CompiledRoute | None:
        return self._by_name.get(name)

    def weights(self) -> dict[str, dict[str, float]]:
        """Effective weights per route (file weights with overrides applied).

        Computed once per table (1,000 routes cost ~3 ms) and shared: do not modify it.
        """
        if self._weights is None:
            self._weights = {
                r.name: dict(zip(r.weighted.subsets, r.weighted.weights, strict=True))
                for r in self.routes
            }
        return self._weights

    def explain(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str] | None = None,
        client_ip: str = "",
    ) -> dict[str, Any]:
        """JSON-able account of how `decide` treats this request (no random draw)."""
        routes = self.scan(headers.get("host")).routes
        return explain_request(routes, method, target, headers, cookies or {}, client_ip)


def retire(old: RoutingTable | None, new: RoutingTable) -> None:
    """`old` was just replaced by `new`: empty the decision memo of each route `new` does
    not reuse. Decision and route point at each other; without this cycle a dropped route
    is freed by reference counting, not left to the cycle collector (the App freezes it)."""
    if old is None:
        return
    for cr in old.routes:
        if new.route(cr.name) is not cr:
            cr.decisions.clear()


_RouteKey = tuple[str, tuple[float, ...], Any]


class BuildCache:
    """Compiled pieces of earlier builds, reused when the same config value comes back.

    A weight change recompiles no regex (matchers are cached apart from weights), and a
    reload recompiles only the routes whose config changed. Entries are keyed by value
    (frozen config dataclasses), looked up first by route name so that an unchanged config
    object costs an identity check, not a hash of the whole route. Bounded: once it holds
    more than twice what one table needs, a finished build drops everything it did not use.
    Not thread-safe, and one build at a time: a build that spans awaits uses a `fork()`.
    """

    def __init__(self) -> None:
        self.identity: Identity | None = None
        self._routes: dict[_RouteKey, tuple[Route, CompiledRoute]] = {}
        self._rules: dict[tuple[MatchRule, ...], tuple[CompiledRule, ...]] = {}
        self._weighted: dict[tuple[tuple[str, ...], tuple[float, ...]], Weighted] = {}
        self._used: tuple[set, set, set] = (set(), set(), set())

    def __len__(self) -> int:
        return len(self._routes)

    def fork(self) -> BuildCache:
        """A copy to build into while this one keeps serving other builds (cheap: dicts)."""
        new = BuildCache()
        new.identity = self.identity
        new._routes, new._rules = dict(self._routes), dict(self._rules)
        new._weighted = dict(self._weighted)
        return new

    def start(self, identity: Identity) -> None:
        """Begin a build; identity settings feed every matcher, so a change clears all."""
        if identity != self.identity:
            self._routes.clear()
            self._rules.clear()
            self.identity = identity
        self._used = (set(), set(), set())

    def rules(self, match: tuple[MatchRule, ...]) -> tuple[CompiledRule, ...]:
        got = self._rules.get(match)
        if got is None:
            assert self.identity is not None
            got = self._rules[match] = compile_rules(match, self.identity)
        self._used[1].add(match)
        return got

    def weighted(self, subsets: tuple[str, ...], weights: tuple[float, ...]) -> Weighted:
        key = (subsets, tuple(check_weight(w) for w in weights))  # bad input: ValueError
        got = self._weighted.get(key)
        if got is None:
            got = self._weighted[key] = build_weighted(subsets, weights)
        self._used[2].add(key)
        return got

    def route(self, route: Route, config: Config, overrides: Overrides) -> CompiledRoute:
        """The compiled route, from the cache when route, weights and canary match are equal."""
        key = (
            route.name,
            _effective_weights(route, overrides),
            overrides.canary_match.get(route.name),
        )
        hit = self._routes.get(key)
        if hit is None or hit[0] is not route:
            if hit is not None and hit[0] == route:  # equal value from a new file: reuse, and
                hit = self._routes[key] = (route, hit[1])  # match by identity next time
            else:
                hit = self._routes[key] = (route, compile_route(route, config, overrides, self))
        self._used[0].add(key)
        return hit[1]

    def finish(self, n_routes: int) -> None:
        """End a build: if the cache outgrew twice the table, keep only what it used."""
        if len(self._routes) <= 2 * n_routes + 64:
            return
        routes, rules, weighted = self._used
        self._routes = {k: v for k, v in self._routes.items() if k in routes}
        self._rules = {k: v for k, v in self._rules.items() if k in rules}
        self._weighted = {k: v for k, v in self._weighted.items() if k in weighted}


def iter_build_table(
    config: Config, overrides: Overrides | None = None, cache: BuildCache | None = None
) -> Generator[None, None, RoutingTable]:
    """`build_table` in steps: yields after each route, returns the table (StopIteration).

    The caller decides when to run the next step, so an event loop can serve requests
    between routes while a large config compiles. Nothing is swapped here.
    """
    ov = overrides or Overrides()
    c = cache if cache is not None else BuildCache()
    c.start(config.identity)
    routes = []
    for r in config.routes:
        routes.append(c.route(r, config, ov))
        yield
    c.finish(len(routes))
    return RoutingTable(config, ov, tuple(routes))


def build_table(
    config: Config, overrides: Overrides | None = None, cache: BuildCache | None = None
) -> RoutingTable:
    """Compile every route. Raises ValueError on a bad weight or regex; changes nothing.

    Override entries naming routes or subsets no longer in the config are ignored, so a
    state file that outlived a reload cannot stop the proxy from serving. With a `cache`,
    routes compiled by an earlier build with equal inputs are reused.
    """
    steps = iter_build_table(config, overrides, cache)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


# Names readers look for here; they live in proxy.routing.route and proxy.routing.scan.
__all__ = [
    "MIN_INDEXED",
    "BuildCache",
    "CompiledRoute",
    "Decision",
    "Overrides",
    "RoutingTable",
    "build_table",
    "choose",
    "iter_build_table",
    "retire",
]
