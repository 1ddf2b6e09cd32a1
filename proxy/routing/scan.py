"""One ordered list of candidate routes and the first-match pick over it.

The routing table keeps one `Scan` for the whole config, or one per (listener, host group)
when routes name hosts or listeners (proxy.routing.hosts orders each group).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from proxy.routing.match import HeaderIndex, Request, build_header_index
from proxy.routing.route import NOT_FOUND, CompiledRoute, Decision, choose

# Fewest exact-header routes for which a scan builds the header index.
MIN_INDEXED: Final = 4


class Scan:
    """One ordered candidate list with its exact-header index: `decide` within it.

    Exact-header routes are found by hash (as nginx's `map`); the others, with their
    position, are still scanned in order, but only those ahead of the indexed hit. A lookup
    costs about as much as 2-3 checks: a few such routes are just scanned."""

    __slots__ = ("routes", "index", "plain")

    def __init__(self, routes: tuple[CompiledRoute, ...]) -> None:
        self.routes = routes
        use = sum(r.index_keys is not None for r in routes) >= MIN_INDEXED
        keys = [r.index_keys if use else None for r in routes]
        self.index: HeaderIndex = build_header_index(keys) if use else ()
        self.plain = tuple((i, r.test, r) for i, r in enumerate(routes) if keys[i] is None)

    def decide(self, req: Request, headers: Mapping[str, str], rnd: float) -> Decision:
        """The first route whose match list holds, exactly as a scan in order: the earliest
        indexed route that holds is looked up, and only the non-indexed routes before it
        are tried first. Inlined: this runs once per request."""
        index, routes = self.index, self.routes
        if not index:  # nothing indexed: the plain scan, without the index's bookkeeping
            for cr in routes:
                test = cr.test
                if test is None or test(req):
                    return choose(cr, req, rnd)
            return NOT_FOUND
        best = len(routes)
        for name, values in index:
            value = headers.get(name)
            if value is not None:
                i = values.get(value, best)
                if i < best:
                    best = i
        for i, test, cr in self.plain:
            if i > best:
                break
            if test is None or test(req):
                return choose(cr, req, rnd)
        return choose(routes[best], req, rnd) if best < len(routes) else NOT_FOUND


__all__ = ["MIN_INDEXED", "Scan", "choose"]
