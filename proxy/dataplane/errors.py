"""Responses the proxy makes itself: status, JSON body and `x-canaryproxy-error` reason.

Each reason maps to one status, one human text and the `upstream_errors_total` reason it counts
as (None: not an upstream error). The bytes are built once per (reason, close) pair.
"""

from __future__ import annotations

import json
from functools import lru_cache
from http import HTTPStatus
from typing import Final

# reason -> (status, human text, upstream error label or None)
ERRORS: Final[dict[str, tuple[int, str, str | None]]] = {
    "upstream_connect_refused": (502, "the upstream refused the connection", "connect"),
    "upstream_reset": (502, "the upstream closed the connection", "reset"),
    "upstream_bad_response": (502, "the upstream sent an invalid response", "reset"),
    "upstream_tls": (502, "the TLS handshake with the upstream failed", "connect"),
    "upstream_connect_timeout": (504, "connecting to the upstream timed out", "connect"),
    "upstream_timeout": (504, "the upstream did not answer in time", "timeout"),
    "no_healthy_upstream": (503, "no healthy upstream endpoint", "no_healthy"),
    "overloaded": (503, "the upstream is overloaded, retry later", None),
    "no_destination": (503, "the route has no destination", None),
    "draining": (503, "the proxy is shutting down", None),
    "no_route": (404, "no route matches this request", None),
    "bad_request": (400, "malformed request", None),
    "method_not_allowed": (405, "CONNECT is not supported", None),
    "body_too_large": (413, "request body too large", None),
    "uri_too_long": (414, "request line too long", None),
    "headers_too_large": (431, "request header fields too large", None),
    "request_timeout": (408, "the request was not received in time", None),
    "expectation_failed": (417, "unsupported expectation", None),
    "loop_detected": (508, "the request already passed through this proxy", None),
    "fault_abort": (0, "fault injected by the route", None),
}
# Errors after which the client connection is closed: the stream cannot be trusted.
CLOSING: Final = frozenset(
    {
        "bad_request",
        "method_not_allowed",
        "body_too_large",
        "uri_too_long",
        "headers_too_large",
        "request_timeout",
        "expectation_failed",
    }
)


def status_of(reason: str, fault_status: int = 0) -> int:
    return ERRORS[reason][0] or fault_status


@lru_cache(maxsize=256)
def error_response(reason: str, close: bool, status: int = 0, extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 response for a proxy-made error."""
    code, text, _ = ERRORS[reason]
    code = code or status
    body = json.dumps({"error": text, "reason": reason}).encode()
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Error"
    head = (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nx-canaryproxy-error: {reason}\r\nVia: 1.1 canaryproxy\r\n"
    ).encode()
    if code == 503 and reason == "overloaded":
        head += b"Retry-After: 1\r\n"
    head += extra
    head += b"Connection: close\r\n" if close else b""
    return head + b"\r\n" + body


@lru_cache(maxsize=1024)
def status_line(code: int) -> bytes:
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {code} {phrase}\r\n".encode()
