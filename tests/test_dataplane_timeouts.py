"""Upstream connect timeout through the real proxy, against a listener that never accepts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from util_servers import raw_exchange, simple_config, start_proxy, start_upstream, status_of


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A loopback address whose connects hang: a listener with backlog 0 that never accepts,
    its accept queue filled by our own connections, so further SYNs are dropped."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    address = f"127.0.0.1:{srv.getsockname()[1]}"
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.2)
            fillers.append(s)
            try:
                s.connect(srv.getsockname())
            except TimeoutError:
                break  # the queue is full: connects now hang
        else:
            pytest.skip("the kernel accepted every connect: cannot make a hanging listener")
        yield address
    finally:
        for s in fillers:
            s.close()
        srv.close()


async def test_connect_timeout_is_504_and_counted() -> None:
    with black_hole() as address:
        config = simple_config({"v1": [address]}, upstream_extra=", connect_timeout: 0.3s")
        p = await start_proxy(config)
        try:
            out = await raw_exchange(
                p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            assert status_of(out) == 504
            assert b"x-canaryproxy-error: upstream_connect_timeout" in out
            assert p.metrics.errors == [("v1", "connect")]
            assert p.metrics.observed == [("default", "default", "v1", 504)]
            (pool,) = p.pools.status()  # the failed attempt gave back every slot it took
            assert (pool["in_flight"], pool["connections"]) == (0, 0)
            assert pool["endpoints"][0]["active"] == 0
        finally:
            await p.close()


async def test_connect_timeout_retries_on_the_other_endpoint() -> None:
    good = await start_upstream()
    with black_hole() as address:
        route = "    retries: {attempts: 1, retry_on: [connect-failure]}"
        config = simple_config(
            {"v1": [address, good.address]},
            extra_route=route,
            upstream_extra=", connect_timeout: 0.3s",
        )
        p = await start_proxy(config)
        try:
            for _ in range(2):  # round robin: one of the two starts on the black hole
                out = await raw_exchange(
                    p.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                )
                assert status_of(out) == 200
            assert len(good.requests) == 2
        finally:
            await p.close()
            await good.close()
