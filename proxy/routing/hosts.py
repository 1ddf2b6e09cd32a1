"""Virtual hosts: which routes a request's Host may reach, in which order (SPEC §6).

Rules kept here (the Gateway API's hostname precedence):
- a Host is compared lower-case, without its port and trailing dot;
- `*.example.com` matches one or more labels before `.example.com`, never `example.com`;
- for one Host the candidate routes are, in this order: routes naming the Host exactly,
  then routes whose wildcard matches it (longer wildcard first), then routes without
  `hosts`; within each rank, config order; the first candidate whose match holds wins;
- a Host no route names gets the routes without `hosts` (none: 404).
The order per Host is computed at build time, so a lookup costs one dict probe for an
exact Host plus one per label for wildcards, however many hosts the config names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


def host_key(value: str | None) -> str:
    """A Host header (or authority) as hosts are compared: `Shop.Example.com:8080.` ->
    `shop.example.com`; `[::1]:80` -> `[::1]`."""
    if not value:
        return ""
    host = value
    if host.startswith("["):
        end = host.find("]")
        host = host[: end + 1] if end != -1 else host
    else:
        colon = host.rfind(":")
        if colon != -1:
            host = host[:colon]
    return host.rstrip(".").lower()


def _wild_suffix(pattern: str) -> str | None:
    """`*.example.com` -> `.example.com`; None for an exact host."""
    return pattern[1:] if pattern.startswith("*.") else None


def _rank(route_hosts: tuple[str, ...], host: str | None, suffix: str | None) -> int | None:
    """How a route with `route_hosts` ranks for an exact `host` (or, with `suffix`, for any
    host under that wildcard): 0 exact, 1+ wildcard (shorter = larger), None: not a match."""
    best: int | None = None
    for p in route_hosts:
        wild = _wild_suffix(p)
        if wild is None:
            if host is not None and p == host:
                return 0
            continue
        covers = (host is not None and host.endswith(wild)) or (
            suffix is not None and suffix.endswith(wild)
        )
        if covers:
            r = 1_000_000 - len(wild)  # longer wildcards first
            best = r if best is None or r < best else best
    return best


def order_for(
    items: Sequence[T],
    hosts_of: Callable[[T], tuple[str, ...]],
    host: str | None,
    suffix: str | None,
) -> tuple[T, ...]:
    """The candidates for one exact host (or one wildcard suffix), in precedence order."""
    ranked = []
    for i, item in enumerate(items):
        hs = hosts_of(item)
        if not hs:
            ranked.append((2_000_000, i, item))
            continue
        r = _rank(hs, host, suffix)
        if r is not None:
            ranked.append((r, i, item))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return tuple(item for _, _, item in ranked)


class HostMap(Generic[V]):
    """Host -> `wrap(its candidate list)`, built once for a route list."""

    __slots__ = ("exact", "wild", "default")

    def __init__(
        self,
        items: Sequence[Any],
        hosts_of: Callable[[Any], tuple[str, ...]],
        wrap: Callable[[tuple], V] = tuple,  # type: ignore[assignment]
    ) -> None:
        names = {h for item in items for h in hosts_of(item)}
        exact = {h for h in names if _wild_suffix(h) is None}
        wild = {w for h in names if (w := _wild_suffix(h)) is not None}
        self.exact = {h: wrap(order_for(items, hosts_of, h, None)) for h in sorted(exact)}
        self.wild = {w: wrap(order_for(items, hosts_of, None, w)) for w in sorted(wild)}
        self.default = wrap(tuple(item for item in items if not hosts_of(item)))

    def lookup(self, host: str) -> V:
        """The candidates for a `host_key`ed host."""
        got = self.exact.get(host)
        if got is not None:
            return got
        if self.wild:
            dot = host.find(".")
            while dot > 0:  # ".b.example.com", then ".example.com", ...: longest first
                got = self.wild.get(host[dot:])
                if got is not None:
                    return got
                dot = host.find(".", dot + 1)
        return self.default
