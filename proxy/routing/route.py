"""A compiled route and the pick inside it: `choose(route, request, draw) -> Decision`.

The order of the pick is the table's (see proxy.routing.table); `explain` reads the same
fields without a draw. Kept apart from the table so that explain and the table share it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.config.schema import DirectResponse, Fault, HeaderPolicy, Redirect, Retries, Route
from proxy.routing.match import Check, CompiledRule, Request
from proxy.routing.rewrite import PathRewrite
from proxy.routing.split import Weighted, bucket_of, mirror_hit, pick_hash, pick_random

# Decision.reason values: how the subset was picked (or what the route does instead).
WEIGHTS: Final = "weights"
HASH: Final = "hash"
STICKY: Final = "sticky"
PREVIEW: Final = "preview"
CANARY_MATCH: Final = "canary_match"
NO_WEIGHT: Final = "no_weight"
NO_ROUTE: Final = "no_route"
REDIRECT: Final = "redirect"
DIRECT_RESPONSE: Final = "direct_response"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class CompiledRoute:
    """One route with everything `decide` needs precomputed. Hashed and compared by identity."""

    name: str
    service: str
    timeout: float
    retries: Retries
    fault: Fault | None
    max_body: int
    headers: HeaderPolicy
    dest_headers: dict[str, HeaderPolicy]
    route: Route
    rules: tuple[CompiledRule, ...]
    weighted: Weighted
    live: frozenset[str]  # subsets with weight > 0
    split_by: str  # random | header | cookie | source_ip
    split_key: str  # header name (lower-case) or cookie name
    sticky_cookie: str | None
    set_cookies: dict[str, str]  # subset -> Set-Cookie value
    idle: str | None  # preview target
    preview: tuple[str, str] | None  # (lower-case header, value)
    mirrors: tuple[tuple[str, float], ...]  # (subset, percent), in config order
    canary_subset: str | None
    canary_rules: tuple[CompiledRule, ...]
    test: Check | None  # the whole match list as one callable; None: every request
    canary_test: Check | None
    # (header, value) keys when every match item is one exact-header condition: the table
    # finds this route by hash lookup instead of running `test`. None: not indexed.
    index_keys: tuple[tuple[str, str], ...] | None
    # Decisions are immutable and drawn from a small set per route: built once, then shared
    # (a frozen dataclass costs ~0.4 us to construct).
    # Keyed by (subset, cookie, mirror, reason), and a plain weighted pick by its subset alone.
    decisions: dict[tuple[str | None, str | None, Mirrors, str] | str, Decision]
    hosts: tuple[str, ...] = ()
    listeners: tuple[str, ...] = ()
    redirect: Redirect | None = None  # set: the route answers with a redirect
    direct: DirectResponse | None = None  # set: the route answers with this
    rewrite: PathRewrite | None = None  # how the forwarded request's target and Host change
    prefixes: tuple[str, ...] = ("/",)  # the path prefixes matched (rewrite.matched_prefix)
    # subset -> the other destinations to try when it has no healthy endpoint or refuses
    # the connection (heaviest first, weight > 0 only); empty with `failover: off`
    failover: dict[str, tuple[str, ...]] | None = None

    def decision(
        self, subset: str | None, cookie: str | None, mirror: Mirrors, reason: str
    ) -> Decision:
        key = (subset, cookie, mirror, reason)
        d = self.decisions.get(key)
        if d is None:
            d = self.decisions[key] = Decision(self, subset, cookie, mirror, reason)
        return d

    def weighted_decision(self, subset: str) -> Decision:
        """`decision(subset, None, None, WEIGHTS)`, memoized under the subset name: a plain
        weighted pick builds no 4-tuple key per request."""
        d = self.decisions.get(subset)
        if d is None:
            d = self.decisions[subset] = Decision(self, subset, None, None, WEIGHTS)
        return d

    def __repr__(self) -> str:
        return f"CompiledRoute({self.name!r})"


Mirrors = tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Decision:
    route: CompiledRoute | None  # None -> 404 no_route
    subset: str | None  # None with a route -> 503 (no weight), or a redirect/direct response
    set_cookie: str | None  # a full Set-Cookie value for sticky, or None
    mirror: Mirrors  # subsets to mirror this request to, or None
    reason: str  # how the subset was picked (the constants above)


NOT_FOUND: Final = Decision(None, None, None, None, NO_ROUTE)


def split_key_value(cr: CompiledRoute, req: Request) -> str | None:
    """The hash key of this request, or None (random split or key missing)."""
    by = cr.split_by
    if by == "header":
        return req.headers.get(cr.split_key)
    if by == "cookie":
        return req.cookies().get(cr.split_key)
    if by == "source_ip":
        return req.client_ip or None
    return None


def _split(cr: CompiledRoute, req: Request, rnd: float) -> tuple[str | None, str]:
    key = split_key_value(cr, req)
    if key is not None:
        subset = pick_hash(cr.weighted, bucket_of(cr.name, key))
    else:
        subset = pick_random(cr.weighted, rnd)
    if subset is None:
        return None, NO_WEIGHT
    return subset, HASH if key is not None else WEIGHTS


def _mirror(cr: CompiledRoute, subset: str | None, rnd: float) -> Mirrors:
    """The mirrors this request goes to: each for its percent of requests (one draw for
    all, so a 10 % mirror gets a subset of a 50 % mirror's copies), never to itself."""
    mirrors = cr.mirrors
    if not mirrors or subset is None:
        return None
    if len(mirrors) == 1:
        to, percent = mirrors[0]
        return (to,) if to != subset and mirror_hit(rnd, percent) else None
    hits = tuple(to for to, percent in mirrors if to != subset and mirror_hit(rnd, percent))
    return hits or None


def choose(cr: CompiledRoute, req: Request, rnd: float) -> Decision:
    """Pick the subset inside a matched route (order in the module docstring)."""
    if cr.redirect is not None or cr.direct is not None:
        return cr.decision(None, None, None, REDIRECT if cr.redirect else DIRECT_RESPONSE)
    if cr.canary_test is not None and cr.canary_test(req):
        sub = cr.canary_subset
        return cr.decision(sub, None, _mirror(cr, sub, rnd), CANARY_MATCH)
    if cr.preview is not None and cr.idle is not None:
        if req.headers.get(cr.preview[0]) == cr.preview[1]:
            return cr.decision(cr.idle, None, None, PREVIEW)
    pinned = None
    if cr.sticky_cookie is not None:
        pinned = req.cookies().get(cr.sticky_cookie)
        if pinned in cr.live:
            return cr.decision(pinned, None, _mirror(cr, pinned, rnd), STICKY)
    subset, reason = _split(cr, req, rnd)
    if reason == WEIGHTS and subset is not None and not cr.set_cookies and not cr.mirrors:
        return cr.weighted_decision(subset)  # the common case: no cookie, no mirror to roll
    cookie = cr.set_cookies.get(subset) if subset is not None and subset != pinned else None
    return cr.decision(subset, cookie, _mirror(cr, subset, rnd), reason)
