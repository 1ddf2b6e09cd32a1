"""The data plane's decisions, as plain functions over plain values: no sockets, no clock.

Four families, each rule stated in its docstring:

- retries: which failed attempts are tried again (`retry_after_*`, `can_retry`), what a retry
  costs (`attempts_after_retry`) and how long an attempt may wait (`response_deadline`);
- failover: whether a request whose version cannot be reached goes to another destination
  of its route, and to which (`failover_to`);
- framing: how a body is delimited, to the client (`response_framing`) and to the upstream
  (`request_framing`);
- must-close: when the client connection ends after a response (`must_close`,
  `close_after_error`), what the response says about it (`connection_field`) and how it ends
  (`lingers`).

`proxy.dataplane.exchange` asks these and does the I/O; `tests/test_dataplane_rules.py` has a
row per case. Four run for every request and are inlined where they run, since a call is ~0.3 %
of a small request's instructions: `response_framing`, `must_close` and `connection_field` in
`stream.ResponseStream._response_head`, `request_framing` in `heads.request_head`. A change
to one of them goes there too.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from proxy.dataplane.errors import CLOSING

# --- retries ------------------------------------------------------------------------------
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_LIMIT: Final = 64 * 1024  # a body up to this size is kept so that a retry can resend it
UPSTREAM_RESET: Final = "upstream_reset"  # the failure reason of a connection the upstream closed
# `retry_on` conditions (proxy.config.schema.RETRY_ON)
CONNECT_FAILURE: Final = "connect-failure"
RESET: Final = "reset"
RETRY_STATUS: Final = {502: "502", 503: "503", 504: "504"}  # an upstream status -> its condition
PER_TRY_TIMEOUT: Final = "504"  # an expired per_try_timeout counts as a 504 (as in Envoy)
# What follows a failed attempt
NO_RETRY: Final = 0  # answer the client (an error, or the upstream's response)
RETRY: Final = 1  # try again, on another endpoint when there is one
RETRY_FRESH: Final = 2  # try again on a new connection (a pooled one the upstream had closed)


def can_retry(
    cond: str,
    sent: bool,
    method: bytes,
    attempts_left: int,
    retry_on: Collection[str],
    replayable: bool,
) -> bool:
    """An attempt is tried again only while attempts are left, `retry_on` lists its condition
    and the request body is still held; once request bytes reached the upstream, only for an
    idempotent method (RFC 9110 §9.2.2: never replay a non-idempotent request)."""
    if attempts_left <= 0 or cond not in retry_on:
        return False
    if sent and method not in IDEMPOTENT:
        return False
    return replayable


def retry_after_connect_failure(
    method: bytes, attempts_left: int, retry_on: Collection[str], replayable: bool
) -> int:
    """A refused or timed-out connect sent nothing, so any method, POST too, is retried when
    `retry_on` lists `connect-failure`."""
    if can_retry(CONNECT_FAILURE, False, method, attempts_left, retry_on, replayable):
        return RETRY
    return NO_RETRY


def retry_after_reset(
    reason: str,
    got_bytes: bool,
    reused: bool,
    stale_retried: bool,
    method: bytes,
    attempts_left: int,
    retry_on: Collection[str],
    replayable: bool,
) -> int:
    """A pooled connection the upstream closed before any response byte is retried once on a
    fresh connection for an idempotent method, whatever `retry_on` says; any other reset only
    when `retry_on` lists `reset` and the method is idempotent; an invalid response never.

    Asked only before the response head reached the client: after that nothing is retried.
    """
    if reason != UPSTREAM_RESET:
        return NO_RETRY
    if not got_bytes and reused and not stale_retried and method in IDEMPOTENT and replayable:
        return RETRY_FRESH
    if can_retry(RESET, True, method, attempts_left, retry_on, replayable):
        return RETRY
    return NO_RETRY


def retry_after_response_timeout(
    per_try: bool, method: bytes, attempts_left: int, retry_on: Collection[str], replayable: bool
) -> int:
    """A response head later than `per_try_timeout` is retried when `retry_on` lists "504",
    for an idempotent method only (the request was sent); the route's `timeout` is final."""
    if per_try and can_retry(PER_TRY_TIMEOUT, True, method, attempts_left, retry_on, replayable):
        return RETRY
    return NO_RETRY


def retry_after_status(
    status: int, method: bytes, attempts_left: int, retry_on: Collection[str], replayable: bool
) -> int:
    """An upstream 502, 503 or 504 is retried when `retry_on` lists that status, for an
    idempotent method only; any other status goes to the client."""
    cond = RETRY_STATUS.get(status)
    if cond is not None and can_retry(cond, True, method, attempts_left, retry_on, replayable):
        return RETRY
    return NO_RETRY


def attempts_after_retry(attempts_left: int) -> int:
    """Every retry spends one attempt of the route's budget, the stale-connection retry too
    (which goes ahead even with none left): the count never drops below zero."""
    return max(attempts_left - 1, 0)


def response_deadline(
    t0: float, now: float, timeout: float, per_try_timeout: float | None
) -> tuple[float, bool]:
    """The response head is awaited until the route's `timeout` after the request arrived
    (0: no limit), or for `per_try_timeout` from now when that ends sooner; True in the second
    case (a per-try expiry may be retried)."""
    left = t0 + timeout - now if timeout > 0 else 1e9
    per_try = per_try_timeout or 0.0
    if 0 < per_try < left:
        return now + per_try, True
    return now + max(left, 0.0), False


# --- failover -------------------------------------------------------------------------------
NO_HEALTHY: Final = "no_healthy_upstream"  # the version's pool had no usable endpoint
CONNECT_REFUSED: Final = "upstream_connect_refused"
FAILOVER_ON: Final = frozenset({NO_HEALTHY, CONNECT_REFUSED})  # the failures a request may leave
FAILOVER_FIELD: Final = "x-canaryproxy-failover"  # the response field naming `<from>-><to>`


def failover_to(
    reason: str,
    sent: bool,
    replayable: bool,
    order: tuple[str, ...],
    tried: Collection[str],
    usable: Collection[str],
) -> str | None:
    """A request leaves its version only when that version had no usable endpoint or refused
    the connection, and only while none of its bytes ever reached an upstream (`sent`) and
    its body is still held: it goes to the first destination of the route's failover `order`
    (heaviest first; empty with `failover: off`) that it has not tried and that has a usable
    endpoint. None: answer the failure. A connect timeout, an overloaded pool or a reset
    never fail over (the upstream may be alive, or may have the request)."""
    if sent or not replayable or reason not in FAILOVER_ON:
        return None
    for subset in order:
        if subset not in tried and subset in usable:
            return subset
    return None


def failover_chain(chain: str, failed: str, to: str) -> str:
    """The `x-canaryproxy-failover` value after a hop from `failed` to `to`: `v2->v1`, and
    `v2->v1->v3` when the second destination failed too."""
    return f"{chain or failed}->{to}"


# --- framing --------------------------------------------------------------------------------
# How a response body is delimited to the client
NO_BODY: Final = 0  # none (1xx, 204, 304, the answer to HEAD)
LENGTH: Final = 1  # by its Content-Length, forwarded as sent
CHUNKED: Final = 2  # re-chunked for an HTTP/1.1 client: the upstream sent no length
UNTIL_CLOSE: Final = 3  # by closing the connection: an HTTP/1.0 client, and no length


def response_framing(
    method: bytes, http10: bool, status: int, length: bytes | None
) -> tuple[int, bytes]:
    """A 1xx, 204 or 304 response has no body and no length field; the answer to HEAD has no
    body but keeps its Content-Length; a body with a Content-Length keeps it; any other body is
    chunked to an HTTP/1.1 client and ends with the connection to an HTTP/1.0 one.

    -> (mode, the framing field lines to send).
    """
    if status in (204, 304) or status < 200:
        return NO_BODY, b""
    if method == b"HEAD":
        return NO_BODY, (b"Content-Length: " + length + b"\r\n" if length is not None else b"")
    if length is not None:
        return LENGTH, b"Content-Length: " + length + b"\r\n"
    if http10:
        return UNTIL_CLOSE, b""
    return CHUNKED, b"Transfer-Encoding: chunked\r\n"


def request_framing(chunked: bool, content_length: int | None) -> bytes:
    """A request body goes upstream framed as the client framed it: chunked (re-chunked as it
    arrives) or with its Content-Length; a request without either has no framing field."""
    if chunked:
        return b"Transfer-Encoding: chunked\r\n"
    if content_length is not None:
        return b"Content-Length: %d\r\n" % content_length
    return b""


# --- must-close -----------------------------------------------------------------------------
def must_close(
    keep_alive: bool,
    until_close: bool,
    seq: int,
    max_requests: int,
    draining: bool,
    stopped_reading: bool,
    queued: int,
) -> bool:
    """The client connection closes after a response when the client did not ask to keep it
    (HTTP/1.0 without `Connection: keep-alive`, `Connection: close`), when the body ends with
    the close, when the proxy drains, when it was the connection's `keepalive_requests`-th
    request, or when reading stopped and no other response is queued behind it."""
    return (
        not keep_alive
        or until_close
        or draining
        or seq >= max_requests
        or (stopped_reading and queued <= 1)
    )


def close_after_error(reason: str, req_done: bool, must_close: bool) -> bool:
    """A proxy-made error closes the connection when its reason leaves the request stream
    untrusted (bad framing, limits, timeouts), when the request body was not read to its end,
    or when the connection would close anyway."""
    return reason in CLOSING or not req_done or must_close


def connection_field(close: bool, http10: bool) -> bytes:
    """A response after which the connection closes says `Connection: close`; one that keeps
    an HTTP/1.0 client's connection says `Connection: keep-alive` (1.0 closes by default)."""
    if close:
        return b"Connection: close\r\n"
    return b"Connection: keep-alive\r\n" if http10 else b""


def lingers(req_done: bool, error: str) -> bool:
    """A connection closed before its request body was read, or after an error that leaves the
    stream untrusted, lingers (FIN, then the client's unread bytes are dropped) rather than
    closing at once: a reset could lose the answer before the client reads it."""
    return not req_done or error in CLOSING
