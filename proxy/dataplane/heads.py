"""The bytes an exchange writes around the bodies: heads with the route's header edits, chunks.

The header edits of a (route, destination) pair are merged once and kept (`policy_for`); the
names an upstream's `Connection` field nominates are parsed once per value (`nominated`):
upstreams send the same `Connection: keep-alive` every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy import headers as hdr
from proxy.dataplane.request import Request
from proxy.dataplane.rules import request_framing

if TYPE_CHECKING:
    from proxy.config.schema import HeaderPolicy
    from proxy.routing.table import CompiledRoute

NONE: frozenset[bytes] = frozenset()
# (id(route headers), id(destination headers)) -> (those two values, merged policy)
_POLICIES: dict[tuple[int, int], tuple[HeaderPolicy, HeaderPolicy | None, hdr.Policy]] = {}
_NOMINATED: dict[tuple[bytes, ...], frozenset[bytes]] = {}


def request_head(req: Request, policy: hdr.Policy) -> bytes:
    """The request's fields as sent upstream (after the request line and Host), framing and
    the blank line included."""
    lines = hdr.request_lines(
        req.headers, req.connection, req.xff, req.proto, req.request_id, policy
    )
    return lines + request_framing(req.chunked, req.content_length) + b"\r\n"


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def policy_for(route: CompiledRoute, subset: str) -> hdr.Policy:
    """The merged header edits of `route` and its destination `subset`."""
    dest = route.dest_headers.get(subset)
    # Keyed by the identity of the (small, immutable) HeaderPolicy values, not of the
    # route: an entry never keeps a whole routing table of an old config alive.
    key = (id(route.headers), id(dest))
    hit = _POLICIES.get(key)
    if hit is not None and hit[0] is route.headers and hit[1] is dest:
        return hit[2]
    if len(_POLICIES) >= 1024:
        _POLICIES.clear()  # configs replaced by many reloads
    found = [route.headers] + ([dest] if dest is not None else [])
    policy = hdr.build_policy(found)
    _POLICIES[key] = (route.headers, dest, policy)
    return policy


def nominated(connection: list[bytes]) -> frozenset[bytes]:
    """`hdr.nominated`, cached: upstreams send the same `Connection: keep-alive` every time."""
    key = tuple(connection)
    hit = _NOMINATED.get(key)
    if hit is None:
        if len(_NOMINATED) >= 256:
            _NOMINATED.clear()  # an upstream inventing values: keep the cache bounded
        hit = _NOMINATED[key] = hdr.nominated(connection)
    return hit
