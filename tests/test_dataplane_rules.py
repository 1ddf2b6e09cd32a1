"""The data plane's decisions (proxy.dataplane.rules), a row per case, no sockets.

Retries: every method against every failure an attempt can meet. Framing: how each kind of
response is delimited to HTTP/1.1 and HTTP/1.0 clients. Must-close: when the client connection
ends after a response, with the client's keep-alive wish read by llhttp from real request heads.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Callable

import httptools
import pytest

from proxy.dataplane import rules
from proxy.dataplane.errors import CLOSING
from proxy.dataplane.rules import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    NO_RETRY,
    RETRY,
    RETRY_FRESH,
    UNTIL_CLOSE,
)

IDEMPOTENT = [b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"]
NOT_IDEMPOTENT = [b"POST", b"PATCH"]
METHODS = IDEMPOTENT + NOT_IDEMPOTENT
EVERY = frozenset({"connect-failure", "reset", "502", "503", "504"})


def test_rules_import_no_io() -> None:
    """The rules are part of the pure core: no socket, loop, clock or random draw."""
    path = pathlib.Path(rules.__file__).with_name("rules.py")  # the source, also when compiled
    forbidden = {"aiohttp", "asyncio", "socket", "time", "random", "httptools", "uvloop"}
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in forbidden, name


# --- retries: each method x each failure --------------------------------------------------
# event -> (the rule, its arguments before the common four: method, attempts left, retry_on,
# body held); a reset's are (reason, got response bytes, connection reused, stale retry done)
EVENTS: dict[str, tuple[Callable[..., int], tuple]] = {
    "connect refused (nothing sent)": (rules.retry_after_connect_failure, ()),
    "reset of a reused connection before any response byte": (
        rules.retry_after_reset,
        ("upstream_reset", False, True, False),
    ),
    "reset of a new connection before any response byte": (
        rules.retry_after_reset,
        ("upstream_reset", False, False, False),
    ),
    "reset after response bytes": (rules.retry_after_reset, ("upstream_reset", True, True, False)),
    "reset again after the stale retry": (
        rules.retry_after_reset,
        ("upstream_reset", False, True, True),
    ),
    "invalid response": (rules.retry_after_reset, ("upstream_bad_response", True, False, False)),
    "per-try response timeout": (rules.retry_after_response_timeout, (True,)),
    "route response timeout": (rules.retry_after_response_timeout, (False,)),
    "upstream 502": (rules.retry_after_status, (502,)),
    "upstream 503": (rules.retry_after_status, (503,)),
    "upstream 504": (rules.retry_after_status, (504,)),
    "upstream 500": (rules.retry_after_status, (500,)),
    "upstream 200": (rules.retry_after_status, (200,)),
}


def ask(event: str, method: bytes, attempts: int, retry_on: frozenset[str], held: bool) -> int:
    rule, lead = EVENTS[event]
    return rule(*lead, method, attempts, retry_on, held)


# event -> (the answer for an idempotent method, for POST/PATCH), with one attempt left, every
# condition in retry_on and the body held
WITH_BUDGET = {
    "connect refused (nothing sent)": (RETRY, RETRY),
    "reset of a reused connection before any response byte": (RETRY_FRESH, NO_RETRY),
    "reset of a new connection before any response byte": (RETRY, NO_RETRY),
    "reset after response bytes": (RETRY, NO_RETRY),
    "reset again after the stale retry": (RETRY, NO_RETRY),
    "invalid response": (NO_RETRY, NO_RETRY),
    "per-try response timeout": (RETRY, NO_RETRY),
    "route response timeout": (NO_RETRY, NO_RETRY),
    "upstream 502": (RETRY, NO_RETRY),
    "upstream 503": (RETRY, NO_RETRY),
    "upstream 504": (RETRY, NO_RETRY),
    "upstream 500": (NO_RETRY, NO_RETRY),
    "upstream 200": (NO_RETRY, NO_RETRY),
}
# ... and with the route's defaults: no attempts, retry_on [connect-failure]
WITHOUT_BUDGET = {
    "connect refused (nothing sent)": (NO_RETRY, NO_RETRY),
    "reset of a reused connection before any response byte": (RETRY_FRESH, NO_RETRY),
    "reset of a new connection before any response byte": (NO_RETRY, NO_RETRY),
    "reset after response bytes": (NO_RETRY, NO_RETRY),
    "reset again after the stale retry": (NO_RETRY, NO_RETRY),
    "invalid response": (NO_RETRY, NO_RETRY),
    "per-try response timeout": (NO_RETRY, NO_RETRY),
    "route response timeout": (NO_RETRY, NO_RETRY),
    "upstream 502": (NO_RETRY, NO_RETRY),
    "upstream 503": (NO_RETRY, NO_RETRY),
    "upstream 504": (NO_RETRY, NO_RETRY),
    "upstream 500": (NO_RETRY, NO_RETRY),
    "upstream 200": (NO_RETRY, NO_RETRY),
}


def _expected(table: dict[str, tuple[int, int]], event: str, method: bytes) -> int:
    return table[event][0 if method in IDEMPOTENT else 1]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.decode())
@pytest.mark.parametrize("event", list(EVENTS))
def test_retry_with_budget(event: str, method: bytes) -> None:
    assert ask(event, method, 1, EVERY, True) == _expected(WITH_BUDGET, event, method)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.decode())
@pytest.mark.parametrize("event", list(EVENTS))
def test_retry_with_route_defaults(event: str, method: bytes) -> None:
    defaults = frozenset({"connect-failure"})
    assert ask(event, method, 0, defaults, True) == _expected(WITHOUT_BUDGET, event, method)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.decode())
@pytest.mark.parametrize("event", list(EVENTS))
def test_no_retry_once_the_body_is_not_held(event: str, method: bytes) -> None:
    """A body over REPLAY_LIMIT that already went upstream is gone: nothing can resend it."""
    assert ask(event, method, 1, EVERY, False) == NO_RETRY


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.decode())
@pytest.mark.parametrize(
    "event, needs",
    [
        ("connect refused (nothing sent)", "connect-failure"),
        ("reset of a new connection before any response byte", "reset"),
        ("reset after response bytes", "reset"),
        ("per-try response timeout", "504"),
        ("upstream 502", "502"),
        ("upstream 503", "503"),
        ("upstream 504", "504"),
    ],
)
def test_retry_needs_its_condition_in_retry_on(event: str, needs: str, method: bytes) -> None:
    assert ask(event, method, 1, EVERY - {needs}, True) == NO_RETRY
    alone = ask(event, method, 1, frozenset({needs}), True)
    assert alone == _expected(WITH_BUDGET, event, method)


@pytest.mark.parametrize(
    "cond, sent, method, attempts, retry_on, replayable, expected",
    [
        ("reset", True, b"GET", 1, {"reset"}, True, True),
        ("reset", True, b"GET", 0, {"reset"}, True, False),  # no attempts left
        ("reset", True, b"GET", -1, {"reset"}, True, False),
        ("reset", True, b"GET", 3, {"502"}, True, False),  # condition not listed
        ("reset", True, b"GET", 1, set(), True, False),
        ("reset", True, b"GET", 1, {"reset"}, False, False),  # body no longer held
        ("reset", True, b"POST", 1, {"reset"}, True, False),  # sent, not idempotent
        ("reset", False, b"POST", 1, {"reset"}, True, True),  # nothing sent
        ("connect-failure", False, b"PATCH", 2, {"connect-failure"}, True, True),
        ("503", True, b"PUT", 1, {"503"}, True, True),
        ("503", True, b"get", 1, {"503"}, True, False),  # methods are case-sensitive
    ],
)
def test_can_retry(
    cond: str,
    sent: bool,
    method: bytes,
    attempts: int,
    retry_on: set[str],
    replayable: bool,
    expected: bool,
) -> None:
    assert rules.can_retry(cond, sent, method, attempts, retry_on, replayable) is expected


@pytest.mark.parametrize("attempts, after", [(0, 0), (1, 0), (2, 1), (5, 4)])
def test_a_retry_spends_one_attempt(attempts: int, after: int) -> None:
    assert rules.attempts_after_retry(attempts) == after


def test_the_stale_retry_uses_the_budget_it_finds() -> None:
    """GET with `attempts: 1, retry_on: [reset]`: the stale retry spends the one attempt, so a
    second reset (on the fresh connection) is answered, not retried again."""
    on = frozenset({"reset"})
    first = rules.retry_after_reset("upstream_reset", False, True, False, b"GET", 1, on, True)
    assert first == RETRY_FRESH
    left = rules.attempts_after_retry(1)
    again = rules.retry_after_reset("upstream_reset", False, False, True, b"GET", left, on, True)
    assert again == NO_RETRY


@pytest.mark.parametrize(
    "t0, now, timeout, per_try, expected",
    [
        (0.0, 0.0, 0.0, None, (1e9, False)),  # no timeout at all
        (0.0, 4.0, 10.0, None, (10.0, False)),  # the route's deadline, from the arrival
        (0.0, 4.0, 10.0, 2.0, (6.0, True)),  # per-try ends sooner
        (0.0, 4.0, 10.0, 6.0, (10.0, False)),  # per-try as long as what is left: route's
        (0.0, 4.0, 10.0, 8.0, (10.0, False)),  # per-try longer than what is left
        (0.0, 4.0, 0.0, 3.0, (7.0, True)),  # per-try without a route timeout
        (0.0, 12.0, 10.0, None, (12.0, False)),  # already late: due now
        (0.0, 4.0, 10.0, 0.0, (10.0, False)),
    ],
)
def test_response_deadline(
    t0: float, now: float, timeout: float, per_try: float | None, expected: tuple
) -> None:
    assert rules.response_deadline(t0, now, timeout, per_try) == expected


# --- framing ------------------------------------------------------------------------------
CL5 = b"Content-Length: 5\r\n"
TE = b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    "method, http10, status, length, mode, fields",
    [
        (b"GET", False, 200, b"5", LENGTH, CL5),
        (b"GET", True, 200, b"5", LENGTH, CL5),
        (b"GET", False, 200, b"0", LENGTH, b"Content-Length: 0\r\n"),
        (b"GET", False, 200, None, CHUNKED, TE),  # neither: re-chunked for 1.1
        (b"GET", True, 200, None, UNTIL_CLOSE, b""),  # neither: ends with the close for 1.0
        (b"POST", False, 500, None, CHUNKED, TE),
        (b"POST", True, 201, None, UNTIL_CLOSE, b""),
        (b"HEAD", False, 200, b"5", NO_BODY, CL5),  # HEAD keeps the length of the GET
        (b"HEAD", True, 200, b"5", NO_BODY, CL5),
        (b"HEAD", False, 200, None, NO_BODY, b""),
        (b"HEAD", True, 200, None, NO_BODY, b""),
        (b"HEAD", False, 304, b"5", NO_BODY, b""),
        (b"GET", False, 204, None, NO_BODY, b""),
        (b"GET", False, 204, b"0", NO_BODY, b""),  # a length on 204 is not forwarded
        (b"GET", True, 204, None, NO_BODY, b""),
        (b"GET", False, 304, b"5", NO_BODY, b""),
        (b"GET", True, 304, None, NO_BODY, b""),
        (b"GET", False, 100, None, NO_BODY, b""),
        (b"GET", False, 103, b"5", NO_BODY, b""),
        (b"GET", True, 199, None, NO_BODY, b""),
        (b"GET", False, 205, b"0", LENGTH, b"Content-Length: 0\r\n"),
    ],
)
def test_response_framing(
    method: bytes, http10: bool, status: int, length: bytes | None, mode: int, fields: bytes
) -> None:
    assert rules.response_framing(method, http10, status, length) == (mode, fields)


@pytest.mark.parametrize(
    "chunked, length, fields",
    [
        (True, None, TE),
        (False, 12, b"Content-Length: 12\r\n"),
        (False, 0, b"Content-Length: 0\r\n"),
        (False, None, b""),
    ],
)
def test_request_framing(chunked: bool, length: int | None, fields: bytes) -> None:
    assert rules.request_framing(chunked, length) == fields


# --- must-close ---------------------------------------------------------------------------
def keep_alive(head: bytes) -> bool:
    """The client's wish as the client side reads it: llhttp, at the end of the head."""

    class Head:
        wish = False

        def on_headers_complete(self) -> None:
            self.wish = parser.should_keep_alive()

    head_cb = Head()
    parser = httptools.HttpRequestParser(head_cb)
    parser.feed_data(head)
    return head_cb.wish


H10 = b"GET / HTTP/1.0\r\n"
H11 = b"GET / HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(
    "head, until_close, close, field",
    [
        (H10 + b"\r\n", False, True, b"Connection: close\r\n"),
        (H10 + b"Connection: keep-alive\r\n\r\n", False, False, b"Connection: keep-alive\r\n"),
        (H10 + b"Connection: Keep-Alive\r\n\r\n", False, False, b"Connection: keep-alive\r\n"),
        (H10 + b"Connection: keep-alive\r\n\r\n", True, True, b"Connection: close\r\n"),
        (H10 + b"Connection: close\r\n\r\n", False, True, b"Connection: close\r\n"),
        (H11 + b"\r\n", False, False, b""),
        (H11 + b"\r\n", True, True, b"Connection: close\r\n"),  # unreachable: 1.1 is chunked
        (H11 + b"Connection: close\r\n\r\n", False, True, b"Connection: close\r\n"),
        (H11 + b"Connection: CLOSE\r\n\r\n", False, True, b"Connection: close\r\n"),
        (H11 + b"Connection: keep-alive, close\r\n\r\n", False, True, b"Connection: close\r\n"),
        (H11 + b"Connection: keep-alive\r\n\r\n", False, False, b""),
    ],
)
def test_the_clients_wish(head: bytes, until_close: bool, close: bool, field: bytes) -> None:
    wish = keep_alive(head)
    http10 = head.startswith(H10)
    got = rules.must_close(wish, until_close, 1, 1000, False, False, 1)
    assert got is close
    assert rules.connection_field(got, http10) == field


@pytest.mark.parametrize("head", [H10 + b"\r\n", H10 + b"Connection: keep-alive\r\n\r\n"])
def test_a_body_without_length_closes_an_http10_connection(head: bytes) -> None:
    mode, _ = rules.response_framing(b"GET", True, 200, None)
    assert rules.must_close(keep_alive(head), mode == UNTIL_CLOSE, 1, 1000, False, False, 1)


@pytest.mark.parametrize(
    "keep, until_close, seq, max_requests, draining, stopped, queued, close",
    [
        (True, False, 1, 1000, False, False, 1, False),  # the plain keep-alive case
        (False, False, 1, 1000, False, False, 1, True),  # the client asked to close
        (True, True, 1, 1000, False, False, 1, True),  # the body ends with the close
        (True, False, 1, 1000, True, False, 1, True),  # the proxy drains
        (True, False, 999, 1000, False, False, 1, False),
        (True, False, 1000, 1000, False, False, 1, True),  # the keepalive_requests-th
        (True, False, 1001, 1000, False, False, 1, True),
        (True, False, 1, 1000, False, True, 1, True),  # stopped reading, last response
        (True, False, 1, 1000, False, True, 0, True),
        (True, False, 1, 1000, False, True, 2, False),  # stopped, a pipelined one follows
        (True, False, 1, 1000, False, False, 3, False),
    ],
)
def test_must_close(
    keep: bool,
    until_close: bool,
    seq: int,
    max_requests: int,
    draining: bool,
    stopped: bool,
    queued: int,
    close: bool,
) -> None:
    got = rules.must_close(keep, until_close, seq, max_requests, draining, stopped, queued)
    assert got is close


@pytest.mark.parametrize(
    "close, http10, field",
    [
        (True, False, b"Connection: close\r\n"),
        (True, True, b"Connection: close\r\n"),
        (False, True, b"Connection: keep-alive\r\n"),
        (False, False, b""),
    ],
)
def test_connection_field(close: bool, http10: bool, field: bytes) -> None:
    assert rules.connection_field(close, http10) == field


@pytest.mark.parametrize("reason", sorted(CLOSING))
def test_errors_that_distrust_the_stream_close(reason: str) -> None:
    assert rules.close_after_error(reason, True, False)
    assert rules.lingers(True, reason)


@pytest.mark.parametrize(
    "reason, req_done, must, close",
    [
        ("no_route", True, False, False),
        ("upstream_reset", True, False, False),
        ("upstream_timeout", True, False, False),
        ("overloaded", True, False, False),
        ("fault_abort", True, False, False),
        ("no_route", False, False, True),  # the body was not read: the stream is unknown
        ("upstream_connect_refused", True, True, True),  # the connection closes anyway
        ("bad_request", False, True, True),
    ],
)
def test_close_after_error(reason: str, req_done: bool, must: bool, close: bool) -> None:
    assert rules.close_after_error(reason, req_done, must) is close


@pytest.mark.parametrize(
    "req_done, error, linger",
    [
        (True, "", False),  # a clean end closes at once
        (True, "client_closed", False),
        (True, "upstream_reset", False),
        (False, "", True),  # unread body bytes: drain them before the close
        (False, "upstream_reset", True),
        (True, "request_timeout", True),
        (True, "headers_too_large", True),
    ],
)
def test_lingers(req_done: bool, error: str, linger: bool) -> None:
    assert rules.lingers(req_done, error) is linger


# --- failover: a row per case -------------------------------------------------------------
ORDER = ("v1", "v3")  # the route's failover order for v2: heaviest first


@pytest.mark.parametrize(
    "reason, sent, held, order, tried, usable, to",
    [
        ("no_healthy_upstream", False, True, ORDER, ("v2",), ("v1", "v3"), "v1"),
        ("upstream_connect_refused", False, True, ORDER, ("v2",), ("v1", "v3"), "v1"),
        # the heaviest has no usable endpoint: the next one
        ("upstream_connect_refused", False, True, ORDER, ("v2",), ("v3",), "v3"),
        # nowhere to go: answer the error
        ("upstream_connect_refused", False, True, ORDER, ("v2",), (), None),
        ("no_healthy_upstream", False, True, (), ("v2",), ("v1",), None),  # failover: off
        # a second hop never goes back to a version already tried
        ("upstream_connect_refused", False, True, ("v2", "v3"), ("v2", "v1"), ("v2",), None),
        ("upstream_connect_refused", False, True, ("v2", "v3"), ("v2", "v1"), ("v2", "v3"), "v3"),
        # request bytes reached an upstream on an earlier attempt: never sent twice
        ("upstream_connect_refused", True, True, ORDER, ("v2",), ("v1",), None),
        ("no_healthy_upstream", True, True, ORDER, ("v2",), ("v1",), None),
        # the body is no longer held
        ("upstream_connect_refused", False, False, ORDER, ("v2",), ("v1",), None),
        # failures where the version may be alive, or may have the request
        ("upstream_connect_timeout", False, True, ORDER, ("v2",), ("v1",), None),
        ("overloaded", False, True, ORDER, ("v2",), ("v1",), None),
        ("upstream_reset", False, True, ORDER, ("v2",), ("v1",), None),
        ("upstream_timeout", False, True, ORDER, ("v2",), ("v1",), None),
        ("upstream_bad_response", False, True, ORDER, ("v2",), ("v1",), None),
    ],
)
def test_failover_to(
    reason: str,
    sent: bool,
    held: bool,
    order: tuple[str, ...],
    tried: tuple[str, ...],
    usable: tuple[str, ...],
    to: str | None,
) -> None:
    assert rules.failover_to(reason, sent, held, order, tried, usable) == to


@pytest.mark.parametrize(
    "chain, failed, to, value",
    [("", "v2", "v1", "v2->v1"), ("v2->v1", "v1", "v3", "v2->v1->v3")],
)
def test_failover_chain(chain: str, failed: str, to: str, value: str) -> None:
    assert rules.failover_chain(chain, failed, to) == value
