"""Fuzzing the request path: random and mutated request heads and bodies at a running proxy.

The real proxy (a child process) sits in front of a recording upstream. For every
input it must answer with a well-formed HTTP response carrying a valid status, or
close, or wait for more bytes; it must never crash, never log an unhandled
exception, and must keep answering normal requests with the fd count back at its
baseline. Examples are bounded (count and per-example socket timeouts).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault.conftest import launch, require_proxy
from fault.harness import ProxyProcess, UpstreamProcess, health_get, raw_exchange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=100,
    deadline=None,  # each example is bounded by its socket timeouts instead
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
STATUS_LINE = b"HTTP/1.1 "


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, int]]:
    require_proxy()
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    up = UpstreamProcess("v1", tmp / "upstream.jsonl").start()
    started: list[ProxyProcess] = []
    try:
        proxy = launch(tmp / "proxy", started, upstreams={"v1": up.address})
        for _ in range(3):
            assert health_get(proxy.port) == 200
        time.sleep(0.3)
        yield proxy, proxy.fd_count()
    finally:
        for p in started:
            p.stop()
        up.stop()


def _check_answer(proxy: ProxyProcess, payload: bytes) -> None:
    res = raw_exchange(proxy.port, payload, timeout=0.5, close_wait=0.1)
    if res.data:
        assert res.data.startswith(STATUS_LINE), res.data[:100]
        code = res.data[9:12]
        assert code.isdigit() and 100 <= int(code) <= 599, res.data[:100]
    assert proxy.alive(), proxy.log_tail()


TOKENS = [
    b"GET", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"*", b"/", b"/a?b=c", b"http://x/",
    b" ", b"\t", b"\r\n", b"\n", b"\r", b"\x00", b":", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2",
    b"Host: a", b"Content-Length: 5", b"Content-Length: -1", b"Transfer-Encoding: chunked",
    b"Expect: 100-continue", b"Connection: close", b"Upgrade: h2c", b"0\r\n\r\n",
    b"5\r\nhello\r\n", b"ffffffffffffffff\r\n", b"\xff\xfe", b"%00", b"a" * 300,
]  # fmt: skip

BASES = [
    b"GET /fuzz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST /fuzz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /fuzz HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET /fuzz?q=1 HTTP/1.1\r\nHost: localhost\r\nCookie: a=b\r\nUser-Id: u1\r\n\r\n",
]


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "flip", "token"]))
        if op == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 8)) :]
        elif op == "flip" and pos < len(data):
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
        else:
            data = data[:pos] + draw(st.sampled_from(TOKENS)) + data[pos:]
    return data


@FUZZ
@given(mutated_request())
def test_mutated_requests(fuzz_proxy: tuple[ProxyProcess, int], payload: bytes) -> None:
    _check_answer(fuzz_proxy[0], payload)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=16))
def test_token_soup_requests(fuzz_proxy: tuple[ProxyProcess, int], tokens: list[bytes]) -> None:
    _check_answer(fuzz_proxy[0], b"".join(tokens) + b"\r\n\r\n")


header_name = st.binary(min_size=1, max_size=12).filter(lambda b: b":" not in b)
header = st.tuples(header_name, st.binary(max_size=24))


@FUZZ
@given(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH", b"G\x00T"]),
    st.binary(max_size=30),
    st.lists(header, max_size=6),
    st.binary(max_size=64),
)
def test_random_heads_and_bodies(
    fuzz_proxy: tuple[ProxyProcess, int],
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    lines = [method + b" /" + target + b" HTTP/1.1", b"Host: localhost"]
    lines += [k + b": " + v for k, v in headers]
    _check_answer(fuzz_proxy[0], b"\r\n".join(lines) + b"\r\n\r\n" + body)


def test_still_healthy_after_fuzzing(fuzz_proxy: tuple[ProxyProcess, int]) -> None:
    """Runs last in this file: no crash, no unhandled exception logged, no fd leak."""
    proxy, baseline = fuzz_proxy
    assert health_get(proxy.port) == 200
    assert proxy.fds_back_to(baseline), (proxy.fd_count(), baseline)
    assert "Traceback" not in proxy.log_tail(200_000), proxy.log_tail()
