"""The bytes an exchange writes around the bodies: heads with the route's header edits, chunks.

The header edits of a (route, destination) pair are merged once and kept (`policy_for`; with a
rewritten Host or a failover field, `forward_policy`); the names an upstream's `Connection`
field nominates are parsed once per value (`nominated`): upstreams send the same
`Connection: keep-alive` every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy import headers as hdr
from proxy.config.schema import HeaderOps, HeaderPolicy
from proxy.dataplane.errors import status_line
from proxy.dataplane.request import Request
from proxy.dataplane.rules import FAILOVER_FIELD, connection_field

if TYPE_CHECKING:
    from proxy.routing.table import CompiledRoute

NONE: Final[frozenset[bytes]] = frozenset()
# (id(route headers), id(destination headers)) -> (those two values, merged policy)
_POLICIES: Final[dict[tuple[int, int], tuple[HeaderPolicy, HeaderPolicy | None, hdr.Policy]]] = {}
_KEEP_ALIVE: Final = frozenset({b"keep-alive"})
_NOMINATED: Final[dict[tuple[bytes, ...], frozenset[bytes]]] = {}
# (id(route headers), id(destination headers), host, failover) -> (those, merged policy)
_FORWARD: Final[dict[tuple, tuple[HeaderPolicy, HeaderPolicy | None, hdr.Policy]]] = {}


def request_head(req: Request, policy: hdr.Policy) -> bytes:
    """The request's fields as sent upstream (after the request line and Host), framing and
    the blank line included. The framing is `rules.request_framing`, inlined: once per
    request, the call and one more concatenation cost ~0.5 % of a small GET."""
    parts: list[bytes] = []
    hdr.add_request_lines(
        parts, req.headers, req.connection, req.xff, req.proto, req.request_id, policy
    )
    if req.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    elif req.content_length is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % req.content_length)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


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


def forward_policy(
    route: CompiledRoute, subset: str, host: str | None, failover: str
) -> hdr.Policy:
    """`policy_for` plus a Host sent upstream in place of the client's (`rewrite.host`) and
    the response field `x-canaryproxy-failover: <failover>` (when `failover` is set)."""
    dest = route.dest_headers.get(subset)
    key = (id(route.headers), id(dest), host, failover)
    hit = _FORWARD.get(key)
    if hit is not None and hit[0] is route.headers and hit[1] is dest:
        return hit[2]
    if len(_FORWARD) >= 1024:
        _FORWARD.clear()
    ours = HeaderPolicy(
        request=HeaderOps(set=(("Host", host),) if host else ()),
        response=HeaderOps(set=((FAILOVER_FIELD, failover),) if failover else ()),
    )
    policy = hdr.build_policy([route.headers] + ([dest] if dest is not None else []) + [ours])
    _FORWARD[key] = (route.headers, dest, policy)
    return policy


def answer_head(
    status: int,
    fields: list[hdr.Header],
    length: int,
    policy: hdr.Policy,
    http10: bool,
    close: bool,
) -> bytes:
    """The head of an answer a route makes itself (a redirect, a direct response): its
    fields with the route's response edits and Via, framed by `length` (none for 204/304)."""
    lines = hdr.response_lines(fields, NONE, policy, None)
    framing = b"" if status in (204, 304) else b"Content-Length: %d\r\n" % length
    return status_line(status) + lines + framing + connection_field(close, http10) + b"\r\n"


def nominated(connection: list[bytes]) -> frozenset[bytes]:
    """`hdr.nominated`, cached: upstreams send the same `Connection: keep-alive` every time."""
    if len(connection) == 1 and connection[0] == b"keep-alive":
        return _KEEP_ALIVE  # the usual answer, without building the cache key
    key = tuple(connection)
    hit = _NOMINATED.get(key)
    if hit is None:
        if len(_NOMINATED) >= 256:
            _NOMINATED.clear()  # an upstream inventing values: keep the cache bounded
        hit = _NOMINATED[key] = hdr.nominated(connection)
    return hit
