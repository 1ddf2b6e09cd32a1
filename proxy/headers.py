"""Hop-by-hop and forwarding rules (pure: bytes in, bytes out, no I/O).

Rules kept here (RFC 9110 §7.6.1, RELIABILITY.md rows 11-14, 30):
- hop-by-hop fields and every field nominated in `Connection` are removed in both directions;
- `Connection` may never nominate Host, Content-Length or a field the proxy sets itself;
- names containing `_` are dropped (so `X_Forwarded_For` cannot alias a real field);
- the proxy appends X-Forwarded-For, sets X-Forwarded-Proto, X-Request-Id and Via.

Headers travel as `(lower_name, name, value)` byte tuples: the lower-case name drives the
rules, the original spelling is what goes on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from proxy.config.schema import HeaderOps, HeaderPolicy

Header = tuple[bytes, bytes, bytes]  # (lower-case name, name as received, value)

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"expect",
    }
)
# Fields the proxy owns: `Connection` cannot make us drop them.
PROTECTED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
        b"via",
    }
)
# Replaced by the proxy on requests, so incoming copies are dropped.
REPLACED_ON_REQUEST: Final = frozenset({b"x-forwarded-proto", b"x-request-id", b"content-length"})
VIA: Final = b"1.1 canaryproxy"
_VIA_LINE: Final = b"Via: " + VIA + b"\r\n"
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def valid_request_id(value: bytes) -> bool:
    """An incoming X-Request-Id is kept only when it is 1-128 chars of [A-Za-z0-9._-]."""
    return _REQUEST_ID.fullmatch(value) is not None


def nominated(connection_values: Iterable[bytes]) -> frozenset[bytes]:
    """Field names listed in `Connection` headers, minus those the proxy protects."""
    names: set[bytes] = set()
    for value in connection_values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token and token not in PROTECTED:
                names.add(token)
    return frozenset(names)


def client_address(peer: str, xff: bytes | None, trusted_hops: int) -> str:
    """The client as seen through `trusted_hops` proxies in front of us.

    With 0 trusted hops the peer is the client; with N, it is the N-th address from the right
    of `X-Forwarded-For` (the peer counted as the last hop).
    """
    if trusted_hops <= 0 or not xff:
        return peer
    hops = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
    hops.append(peer)
    return hops[max(0, len(hops) - 1 - trusted_hops)]


@dataclass(frozen=True, slots=True)
class Policy:
    """The header edits of one (route, destination) pair in wire form, built once."""

    req_drop: frozenset[bytes]  # request fields not forwarded (X-Forwarded-Proto replaced)
    req_drop_trusted: frozenset[bytes]  # same, keeping an incoming X-Forwarded-Proto
    req_lines: bytes  # "Name: value\r\n" for request set and add, route first
    resp_drop: frozenset[bytes]
    resp_lines: bytes


def _ops_drop(ops: HeaderOps) -> set[bytes]:
    drop = {n.lower().encode("latin-1") for n in ops.remove}
    drop.update(n.lower().encode("latin-1") for n, _ in ops.set)
    return drop


def _ops_lines(ops: HeaderOps) -> bytes:
    pairs = (*ops.set, *ops.add)
    return b"".join(n.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for n, v in pairs)


def build_policy(policies: Sequence[HeaderPolicy]) -> Policy:
    """Merge the route's HeaderPolicy and the destination's (applied in that order)."""
    req: set[bytes] = set(HOP_BY_HOP | REPLACED_ON_REQUEST | {b"x-forwarded-for"})
    resp: set[bytes] = set(HOP_BY_HOP | {b"content-length"})
    for pol in policies:
        req |= _ops_drop(pol.request)
        resp |= _ops_drop(pol.response)
    return Policy(
        req_drop=frozenset(req),
        req_drop_trusted=frozenset(req - {b"x-forwarded-proto"}),
        req_lines=b"".join(_ops_lines(p.request) for p in policies),
        resp_drop=frozenset(resp),
        resp_lines=b"".join(_ops_lines(p.response) for p in policies),
    )


def request_lines(
    headers: Sequence[Header],
    connection: frozenset[bytes],
    xff: bytes,
    proto: bytes | None,
    request_id: bytes,
    policy: Policy,
) -> bytes:
    """Header block for the upstream request, without framing and without the final CRLF.

    `xff` is the full new X-Forwarded-For value; `proto` is None to keep an incoming
    X-Forwarded-Proto (trusted hop in front), else the value to set.
    """
    parts: list[bytes] = []
    add_request_lines(parts, headers, connection, xff, proto, request_id, policy)
    return b"".join(parts)


def add_request_lines(
    parts: list[bytes],
    headers: Sequence[Header],
    connection: frozenset[bytes],
    xff: bytes,
    proto: bytes | None,
    request_id: bytes,
    policy: Policy,
) -> None:
    """`request_lines` as pieces appended to `parts`, for the caller's one join (a piece
    per name, separator and value: no concatenation per field)."""
    drop = policy.req_drop if proto is not None else policy.req_drop_trusted
    for lname, name, value in headers:
        if lname not in drop and lname not in connection:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
    parts.append(b"X-Forwarded-For: ")
    parts.append(xff)
    if proto is not None:
        parts.append(b"\r\nX-Forwarded-Proto: ")
        parts.append(proto)
    parts.append(b"\r\nX-Request-Id: ")
    parts.append(request_id)
    parts.append(b"\r\n")
    parts.append(_VIA_LINE)
    parts.append(policy.req_lines)


def response_lines(
    headers: Sequence[Header],
    connection: frozenset[bytes],
    policy: Policy,
    set_cookie: str | None,
) -> bytes:
    """Header block for the client response, without framing/Connection and final CRLF."""
    parts: list[bytes] = []
    add_response_lines(parts, headers, connection, policy, set_cookie)
    return b"".join(parts)


def add_response_lines(
    parts: list[bytes],
    headers: Sequence[Header],
    connection: frozenset[bytes],
    policy: Policy,
    set_cookie: str | None,
) -> None:
    """`response_lines` as pieces appended to `parts` (see `add_request_lines`)."""
    drop = policy.resp_drop
    for lname, name, value in headers:
        if lname not in drop and lname not in connection:
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(b"\r\n")
    parts.append(_VIA_LINE)
    parts.append(policy.resp_lines)
    if set_cookie:
        parts.append(b"Set-Cookie: " + set_cookie.encode("latin-1") + b"\r\n")


def lower_name(name: bytes) -> bytes:
    """`name.lower()`, and the same object for the same field name: its hash is then computed
    once, so the set and dict lookups that follow on the hot path hash nothing. Bounded: a
    client inventing names empties the cache now and then."""
    low = _LOWER.get(name)
    if low is None:
        if len(_LOWER) >= 1024:
            _LOWER.clear()
        low = _LOWER[name] = name.lower()
    return low


_LOWER: Final[dict[bytes, bytes]] = {}


def forwarded_for(existing: bytes | None, peer: str) -> bytes:
    """X-Forwarded-For with the peer appended (incoming values kept, as nginx/Envoy)."""
    if existing:
        return existing + b", " + peer.encode("latin-1")
    return peer.encode("latin-1")
