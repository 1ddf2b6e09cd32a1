"""The request-line check on the read that starts a request, and the version it reads.

The version it returns replaces the parser's `get_http_version` (which formats a str per
call): it must say HTTP/1.0 exactly when llhttp would, and "unknown" whenever it cannot tell.
"""

from __future__ import annotations

import re

import httptools
import pytest

from proxy.dataplane.request import (
    HTTP10,
    HTTP11,
    UNKNOWN_VERSION,
    Reject,
    check_request_line,
    new_request_id,
)

CASES = [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP11),
    (b"GET / HTTP/1.0\r\n\r\n", HTTP10),
    (b"\r\n\r\nGET /x HTTP/1.0\r\nHost: a\r\n\r\n", HTTP10),  # empty lines first (RFC 9112 §2.2)
    (b"GET / HTTP/1.1", UNKNOWN_VERSION),  # the line is not complete in this read
    (b"GET / HTTP/2.0\r\n\r\n", UNKNOWN_VERSION),  # left to the parser (it refuses)
    (b"GET / http/1.1\r\n\r\n", UNKNOWN_VERSION),
    (b"GET / X\r\n", UNKNOWN_VERSION),
]


@pytest.mark.parametrize(("data", "want"), CASES)
def test_the_version_read_from_the_request_line(data: bytes, want: int) -> None:
    assert check_request_line(data) == want


@pytest.mark.parametrize(
    "data", [b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1 \r\n\r\n", b"GET /\r\n\r\n"]
)
def test_a_request_line_without_exactly_two_spaces_is_refused(data: bytes) -> None:
    with pytest.raises(Reject):
        check_request_line(data)


@pytest.mark.parametrize(("data", "want"), [c for c in CASES if c[1] != UNKNOWN_VERSION])
def test_the_read_version_agrees_with_the_parser(data: bytes, want: int) -> None:
    class Head:
        done = False

        def on_headers_complete(self) -> None:
            self.done = True

    head = Head()
    parser = httptools.HttpRequestParser(head)
    parser.feed_data(data)
    assert head.done
    assert (parser.get_http_version() == "1.0") == (want == HTTP10)


def test_request_ids_are_uuid4_hex_and_differ() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in ids:
        assert re.fullmatch(rb"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", rid), rid


def test_request_ids_span_batches_and_a_forked_child_makes_its_own() -> None:
    import os

    first = [new_request_id() for _ in range(300)]  # more than one batch of 256
    assert len(set(first)) == 300
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(r)
        os.write(w, b"".join(new_request_id() for _ in range(10)))
        os._exit(0)
    os.close(w)
    child = b""
    while chunk := os.read(r, 4096):
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(10)]
    child_ids = [child[i : i + 32] for i in range(0, len(child), 32)]
    assert len(child_ids) == 10
    assert not set(child_ids) & set(parent)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET /\tx HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\n\r\n",
        b"\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST /x HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1",
    ],
)
def test_the_fast_path_answers_as_the_general_rule(data: bytes) -> None:
    """The one-regex path for the common line must never accept what the general rule
    refuses, nor read another version (the general rule, spelled out here)."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n", start)
    if end > 0 and data.count(b" ", start, end) != 2:
        with pytest.raises(Reject):
            check_request_line(data)
        return
    want = UNKNOWN_VERSION
    if end > 0 and data[end - 9 : end] == b" HTTP/1.1":
        want = HTTP11
    elif end > 0 and data[end - 9 : end] == b" HTTP/1.0":
        want = HTTP10
    assert check_request_line(data) == want
