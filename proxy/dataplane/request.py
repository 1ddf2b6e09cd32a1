"""Request-head rules of the client side that need no connection state.

Limits (RELIABILITY.md rows 1-3), the framing checks llhttp leaves to us (rows 15-20),
absolute-form targets, request ids, and the `Request` record a parsed head becomes. Used by
`proxy.dataplane.parse` and `proxy.dataplane.server`.
"""

from __future__ import annotations

import binascii
import os
import random
import re
from dataclasses import dataclass
from typing import Final

from proxy.headers import VIA, Header

# Each limit is the largest value served; one over it is refused.
MAX_LINE: Final = 8192  # request target -> 414
MAX_FIELD: Final = 8192  # one field line, "name: value" -> 431
MAX_HEADERS_TOTAL: Final = 60 * 1024  # all field lines, each with its CRLF -> 431
MAX_HEADERS: Final = 100  # field lines as sent, Host and dropped names included -> 431


class Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stop(Exception):
    """Stop parsing: the connection closes after what is already queued."""


def new_request_id() -> bytes:
    """A uuid4-format hex id, cut from a batch: `_RequestIds`."""
    return _IDS.next()


class _RequestIds:
    """uuid4 ids made 256 at a time: random bits (`random.getrandbits`, no urandom syscall)
    with every id's version and variant bits set by one mask over the whole batch, hexlified
    in one call; each id is then one slice. Per request that is a small fraction of making
    and formatting a 128-bit int."""

    hex: bytes  # the batch's ids, 32 hex digits each
    at: int  # where the next id starts

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start empty (a forked worker makes its own batch, never the rest of its parent's)."""
        self.hex = b""
        self.at = 0

    def next(self) -> bytes:
        at = self.at
        if at >= len(self.hex):
            self._refill()
            at = 0
        self.at = at + 32
        return self.hex[at : at + 32]

    def _refill(self) -> None:
        bits = _getrandbits(128 * _ID_BATCH) & _BATCH_MASK | _BATCH_BITS
        self.hex = _hexlify(bits.to_bytes(16 * _ID_BATCH, "big"))


_ID_BATCH: Final = 256
_UUID4_MASK: Final = ~(0xF000 << 64 | 0xC000 << 48) & ((1 << 128) - 1)  # version, variant
_UUID4_BITS: Final = 0x4000 << 64 | 0x8000 << 48  # version 4, variant RFC 4122
_BATCH_MASK: Final = sum(_UUID4_MASK << (128 * i) for i in range(_ID_BATCH))
_BATCH_BITS: Final = sum(_UUID4_BITS << (128 * i) for i in range(_ID_BATCH))
# Final: statics in the compiled build (an imported name is a dict lookup per call)
_getrandbits: Final = random.getrandbits
_hexlify: Final = binascii.hexlify
_IDS: Final = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reset)


def absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """`http://Shop.example.com:8080/x?q` -> (b"Shop.example.com:8080", b"/x?q"); None for a
    target that is not an http(s) absolute-form. The authority is the request's Host (RFC
    9112 §3.2.2: a received Host field is replaced by it); it names a virtual host, never an
    address the proxy connects to."""
    lower = target[:8].lower()
    if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
        return None
    rest = target.split(b"//", 1)[1]
    slash = rest.find(b"/")
    query = rest.find(b"?")
    if slash < 0 or (0 <= query < slash):
        end = query if query >= 0 else len(rest)
        return rest[:end], (b"/" + rest[query:] if query >= 0 else b"/")
    return rest[:slash], rest[slash:]


def origin_form(target: bytes) -> bytes:
    """The target as forwarded: an absolute-form one by its path and query."""
    if target[:1] == b"/" or target == b"*":
        return target
    parts = absolute_form(target)
    return target if parts is None else parts[1]


def valid_authority(authority: bytes) -> bool:
    """An absolute-form authority the proxy accepts as Host: not empty (RFC 9110 §4.2.1),
    no userinfo (§4.2.4), host [":" port] characters only."""
    return bool(authority) and b"@" not in authority and HOST.fullmatch(authority) is not None


NONE: Final[frozenset[bytes]] = frozenset()
# host [":" port]: reg-name / IPv4 / IP-literal characters only (RFC 3986 §3.2.2)
HOST: Final = re.compile(rb"[A-Za-z0-9._~!$&'()*+,;=%-]*(\[[0-9A-Fa-f:.]+\])?(:[0-9]*)?")


def check_request_line(data: bytes) -> int:
    """llhttp accepts `GET  / HTTP/1.1`; RFC 9112 §3 wants exactly one SP between parts.

    Checked on the read that starts a request (the common case); a request line that
    arrives split across reads is left to llhttp alone. Returns the line's version as
    llhttp will read it, `HTTP10` or `HTTP11`, or `UNKNOWN_VERSION` (then the parser is
    asked: its `get_http_version` formats a str per call).
    """
    if _PLAIN_11(data) is not None:  # the common line, in one C call: the checks below hold
        return HTTP11
    start = 0
    if data and data[0] == 13:  # CR: empty lines before a request are allowed (RFC 9112 §2.2)
        while data.startswith(b"\r\n", start):
            start += 2
    end = data.find(b"\r\n", start)
    if end <= 0:
        return UNKNOWN_VERSION
    if data.count(b" ", start, end) != 2:
        raise Reject("bad_request")
    version = data[end - 9 : end]
    if version == b" HTTP/1.1":
        return HTTP11
    return HTTP10 if version == b" HTTP/1.0" else UNKNOWN_VERSION


# method SP target SP HTTP/1.1 CRLF with no other SP, CR or LF: exactly what the general
# path below accepts as HTTP11 (its bytes.find and bytes.count parse their arguments per call)
_PLAIN_11: Final = re.compile(rb"[^ \r\n]+ [^ \r\n]+ HTTP/1\.1\r\n").match
UNKNOWN_VERSION: Final = -1
HTTP11: Final = 0
HTTP10: Final = 1
UNDERSCORE: Final = 0x5F  # b"_": a field name with one is dropped


SPECIAL: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"x-forwarded-for",
        b"x-request-id",
        b"x-forwarded-proto",
        b"via",
    }
)


def our_via(value: bytes) -> bool:
    """True when a Via field value lists our own `1.1 canaryproxy` hop (a forwarding loop)."""
    if b"canaryproxy" not in value.lower():
        return False
    for hop in value.lower().split(b","):
        hop = hop.strip().split(b" (")[0]  # a trailing comment is not part of the hop
        if hop.removeprefix(b"http/") == VIA:
            return True
    return False


def framing_error(
    method: bytes,
    http10: bool,
    hosts: int,
    cl: list[bytes],
    te: list[bytes],
    url: bytes,
    looped: bool = False,
) -> str | None:
    """The framing rules llhttp leaves to us (RELIABILITY.md rows 15-18, 20): a reason or None."""
    if method == b"CONNECT":
        return "method_not_allowed"
    if hosts > 1 or (hosts == 0 and not http10):
        return "bad_request"
    if len(cl) > 1 or (cl and te):
        return "bad_request"
    if cl and not cl[0].isdigit():
        return "bad_request"
    if te and (http10 or len(te) > 1 or te[0].strip().lower() != b"chunked"):
        return "bad_request"
    if not url.startswith(b"/") and url[:4].lower() != b"http" and url != b"*":
        return "bad_request"
    if looped:
        return "loop_detected"  # RFC 9110 §7.6.3: our own pseudonym already in Via
    return None


@dataclass(slots=True)
class Request:
    """A parsed request head, as the client side hands it to its exchange.

    A slots class reads as fast as a tuple, but calling it (the generated `__init__`, 14
    arguments) costs ~5x building one: the hot path, `parse._request`, takes a bare
    instance (`Request.__new__`) and stores every field, about half of that. Every field
    must be set there.
    """

    method: bytes
    target: bytes  # origin-form
    http10: bool
    keep_alive: bool  # the client's wish, as llhttp reads it (1.0 keep-alive, Connection: close)
    headers: list[Header]  # (lower name, name, value), as received
    content_length: int | None  # None: no Content-Length (or a framing error)
    chunked: bool
    request_id: bytes
    client_ip: str
    connection: frozenset[bytes]  # the field names the Connection header nominates
    xff: bytes  # the X-Forwarded-For to send
    proto: bytes  # the X-Forwarded-Proto to send
    has_host: bool
    error: str | None  # a framing error the proxy answers itself


def bare_request(peer: str) -> Request:
    """Request fields for an answer to bytes that never formed a request."""
    return Request(
        method=b"GET",
        target=b"",
        http10=False,
        keep_alive=False,
        headers=[],
        content_length=None,
        chunked=False,
        request_id=new_request_id(),
        client_ip=peer,
        connection=frozenset(),
        xff=b"",
        proto=b"http",
        has_host=False,
        error=None,
    )
