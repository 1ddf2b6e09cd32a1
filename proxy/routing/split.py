"""Weighted choice of a subset: random per request, or by an mmh3 hash of a key.

Guarantees:
- weights are relative (any sum > 0); a subset with weight 0 is never picked, for any draw;
- random: `rnd` in [0, 1) comes from the caller; subset i is picked with w_i / sum(w);
- hash: bucket = mmh3_32(f"{salt}:{key}") mod 10,000 (salt = the route name). Destinations
  own consecutive bucket ranges in listed order: destination i owns [E(i-1), E(i)) where
  E(i) = round_half_up(10,000 * (w_0 + ... + w_i) / sum(w)), in exact rational arithmetic.
  So a key of destination i stays there while the combined share of the destinations
  listed before i does not grow and the combined share up to and including i does not
  shrink. Consequences:
  * two destinations (stable, canary), either order: raising one's weight relative to the
    other only moves keys to it, never back (monotonic ramp);
  * n destinations: moving weight between two neighbours in the list (stable and the
    canary listed right after it), the others unchanged, only moves keys between those
    two, towards the one that gains (so list the canary right after the stable);
  * bucket -> subset is a pure function of (salt, key, weights), pinned by golden vectors
    in the tests, so a release never reshuffles users.
- mirror: the draw is frac(rnd * 1000), which is uniform and independent enough of the
  split's use of rnd (it reads the lower digits), so one random number serves both.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from math import floor, isfinite
from typing import Final

import mmh3

from proxy.config.schema import Config
from proxy.routing.match import parse_cookies

BUCKETS: Final = 10_000
_bisect_right: Final = bisect_right  # a static in the compiled build, not a global lookup


@dataclass(frozen=True, slots=True)
class Weighted:
    """Precomputed weights of one route: cumulative sums and the hash bucket table."""

    subsets: tuple[str, ...]
    weights: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float
    last: int  # index of the last subset with weight > 0; -1 when none
    edges: tuple[tuple[int, int], ...]  # per subset: [lo, hi) bucket range
    lookup: tuple[str | None, ...] = field(repr=False)  # bucket -> subset; () when total == 0


def check_weight(w: object) -> float:  # object: it checks the type itself
    """A weight must be a finite number >= 0; bad input is an error, not a silent 0."""
    if not isinstance(w, int | float) or isinstance(w, bool) or not isfinite(w) or w < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {w!r}")
    return float(w)


def bucket_ranges(
    weights: tuple[float, ...], buckets: int = BUCKETS
) -> tuple[tuple[int, int], ...]:
    """[lo, hi) bucket range per destination, consecutive in listed order."""
    total = sum(Fraction(w) for w in weights)
    if total == 0:
        return tuple((0, 0) for _ in weights)
    out: list[tuple[int, int]] = []
    lo, acc = 0, Fraction(0)
    for w in weights:
        acc += Fraction(w)
        # Rational arithmetic: an edge moves only when its cumulative share moves.
        hi = floor(buckets * acc / total + Fraction(1, 2))
        out.append((lo, hi))
        lo = hi
    return tuple(out)


def build_weighted(subsets: tuple[str, ...], weights: tuple[object, ...]) -> Weighted:
    """Precompute everything `pick_random` and `pick_hash` need (bad weights: ValueError)."""
    ws = tuple(check_weight(w) for w in weights)
    cum: list[float] = []
    acc = 0.0
    for w in ws:
        acc += w
        cum.append(acc)
    last = max((i for i, w in enumerate(ws) if w > 0), default=-1)
    edges = bucket_ranges(ws)
    lookup: list[str | None] = [None] * BUCKETS if acc > 0 else []
    for name, (lo, hi) in zip(subsets, edges, strict=True):
        lookup[lo:hi] = [name] * (hi - lo)
    return Weighted(subsets, ws, tuple(cum), acc, last, edges, tuple(lookup))


def pick_random(wt: Weighted, rnd: float) -> str | None:
    """Subset for a uniform draw `rnd` in [0, 1); None when every weight is 0."""
    if wt.last < 0:
        return None
    x = rnd * wt.total if rnd > 0.0 else 0.0
    # bisect_right skips zero-weight subsets: their cumulative sum equals the previous one.
    i = _bisect_right(wt.cumulative, x)
    return wt.subsets[i if i < wt.last else wt.last]


def bucket_of(salt: str, key: str) -> int:
    """The key's bucket in [0, 10,000): stable across releases (golden vectors pin it)."""
    return mmh3.hash(f"{salt}:{key}", 0, signed=False) % BUCKETS


def pick_hash(wt: Weighted, bucket: int) -> str | None:
    return wt.lookup[bucket] if wt.lookup else None


def probabilities(wt: Weighted) -> dict[str, float]:
    """Share of traffic per subset, 0..1 (all 0 when no weight is set)."""
    if wt.total <= 0:
        return {s: 0.0 for s in wt.subsets}
    return {s: w / wt.total for s, w in zip(wt.subsets, wt.weights, strict=True)}


def idle_subset(wt: Weighted) -> str | None:
    """The first destination with weight 0 (blue-green preview target), or None."""
    for s, w in zip(wt.subsets, wt.weights, strict=True):
        if w == 0:
            return s
    return None


def sticky_set_cookie(cookie: str, subset: str, max_age: int) -> str:
    """Full Set-Cookie value that pins a client to `subset`."""
    return f"{cookie}={subset}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"


def mirror_hit(rnd: float, percent: float) -> bool:
    """True for `percent` % of draws; reads frac(rnd * 1000), independent of the split."""
    return (rnd * 1000.0) % 1.0 * 100.0 < percent


def format_weights(weights: Mapping[str, float]) -> str:
    """{"v1": 90.0, "v2": 10.0} -> "v1=90 v2=10", as the CLI takes them."""
    return " ".join(f"{s}={w:g}" for s, w in weights.items())


def weights_from_percent(
    current: Mapping[str, float], given: Mapping[str, float]
) -> dict[str, float]:
    """A route's new weights from a request that names some of its destinations.

    `weights ROUTE v2=10` means "v2 gets 10 %": the destinations left out share what is
    left (100 - the given sum) in proportion to their current weights, or equally when
    those are all 0. Naming every destination sets relative weights as written (any sum
    above 0, as in the Gateway API). ValueError, with the reason, for a name the route
    does not have, or a given sum over 100 while some destination is left out.
    """
    unknown = sorted(set(given) - set(current))
    if unknown:
        raise ValueError(f"has no subset {', '.join(unknown)}; known: {', '.join(current)}")
    rest = [s for s in current if s not in given]
    if not rest:
        if sum(given.values()) <= 0:
            raise ValueError("weights must not all be 0: some subset has to take the traffic")
        return {s: float(given[s]) for s in current}
    total = sum(given.values())
    if total > 100:
        named = format_weights(given)
        raise ValueError(
            f"{named} add up to {total:g} %, over 100 %, and {', '.join(rest)} would get "
            "less than nothing; name every destination to set relative weights"
        )
    left = 100.0 - total
    base = sum(current[s] for s in rest)
    out = {s: float(given[s]) for s in given}
    for s in rest:
        share = left * current[s] / base if base > 0 else left / len(rest)
        out[s] = round(share, 6)  # 100/3 is 33.333333, not a long tail of digits
    return {s: out[s] for s in current}


# -- the user key: who 'a user' is on a route, for A/B goals ---------------------------


def key_source(config: Config, route: str) -> tuple[str, str]:
    """Who "a user" is on this route: its split key, else its sticky cookie, else the
    identity user header (the same key that keeps a user on one version)."""
    r = config.route(route)
    if r is not None and r.split.by in ("header", "cookie"):
        return r.split.by, r.split.name.lower() if r.split.by == "header" else r.split.name
    if r is not None and r.split.by == "source_ip":
        return "source_ip", ""
    if r is not None and r.sticky is not None:
        return "cookie", r.sticky.cookie
    return "header", config.identity.user_header.lower()


def user_key(source: tuple[str, str], headers: Mapping[str, str], client_ip: str) -> str:
    """The user key of one request; "" when the request carries none."""
    kind, name = source
    if kind == "header":
        return headers.get(name, "")
    if kind == "cookie":  # the split's own parser: the A/B user is the user the split pinned
        return parse_cookies(headers.get("cookie")).get(name, "")
    return client_ip
