"""`python -m benchmarks.costs`: microseconds per request of each step of our request path.

Times the steps the data plane takes for one proxied request, in-process and one at a time,
through the same public functions it calls: parse (httptools, with callbacks like the
server's), route (RoutingTable.decide), header blocks (request_lines +
response_lines), metrics (ProxyMetrics.observe), and the send() syscalls
(loopback TCP). Read it next to the benchmark's CPU µs per request: what is not listed here is
the event loop, read()/epoll and the Protocol glue.
"""

from __future__ import annotations

import socket
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
from prometheus_client import CollectorRegistry

from benchmarks import configs, scenarios
from proxy import headers as hdr
from proxy.config.validate import validate
from proxy.metrics import ProxyMetrics
from proxy.routing.table import build_table

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE_HEADERS = [
    (b"server", b"Server", b"nginx/1.22.1"),
    (b"date", b"Date", b"Thu, 26 Nov 2026 05:00:00 GMT"),
    (b"content-type", b"Content-Type", b"text/plain"),
    (b"content-length", b"Content-Length", b"2"),
    (b"connection", b"Connection", b"keep-alive"),
]


class _Sink:
    """The callbacks the server registers, doing as little as the server does."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes, bytes]] = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), name, value))

    def on_headers_complete(self) -> None:
        pass

    def on_message_complete(self) -> None:
        self.headers = []


def per_call_us(fn: Callable[[], Any], n: int = 50_000) -> float:
    """Best of 5 repeats, µs per call (the minimum is the least disturbed figure)."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def table_for(s: scenarios.Scenario) -> Any:
    data = configs.ours_dict(8080, 9901, (9001, 9002), s, Path("/dev/null"))
    config, errors = validate(data)
    if config is None:
        raise SystemExit(f"bench config invalid: {errors}")
    return build_table(config)


def route_costs() -> dict[str, float]:
    out = {}
    for name, hdrs in (
        ("small", {"host": "x"}),
        ("header-routes", {"host": "x", scenarios.TENANT_HEADER: f"tenant-{scenarios.ROUTES - 1}"}),
        ("hash", {"host": "x", scenarios.USER_HEADER: "user-12345"}),
        ("sticky", {"host": "x", "cookie": f"{scenarios.STICKY_COOKIE}=v1"}),
    ):
        table = table_for(scenarios.by_name((name,))[0])
        out[f"route ({name})"] = per_call_us(
            lambda t=table, h=hdrs: t.decide("GET", "/", h, "127.0.0.1", 0.5)
        )
    return out


def hosts_table(n: int) -> Any:
    """`n` virtual hosts, one route each (half exact, half wildcard) and a host-less default."""
    ups = {"v1": {"endpoints": ["127.0.0.1:9001"]}, "v2": {"endpoints": ["127.0.0.1:9002"]}}
    routes: list[dict[str, Any]] = []
    for i in range(n):
        host = f"svc-{i}.example.com" if i % 2 == 0 else f"*.svc-{i}.example.com"
        routes.append({"name": f"h{i}", "hosts": [host], "route": [{"destination": "v1"}]})
    routes.append({"name": "default", "route": [{"destination": "v1"}, {"destination": "v2"}]})
    config, errors = validate({"listen": "127.0.0.1:8080", "upstreams": ups, "routes": routes})
    if config is None:
        raise SystemExit(f"bench config invalid: {errors}")
    return build_table(config)


def host_costs(counts: tuple[int, ...] = (1, 100, 1000)) -> dict[str, float]:
    """Decision cost with 1, 100 and 1,000 hosts: an exact host, a wildcard host and a host
    no route names (which falls to the host-less default)."""
    out = {}
    for n in counts:
        table = hosts_table(n)
        last_exact = f"svc-{(n - 1) // 2 * 2}.example.com:8080"
        cases = [("exact", last_exact), ("unknown host", "other.example.org")]
        if n > 1:
            cases.insert(1, ("wildcard", f"a.b.svc-{n - 1 if n % 2 == 0 else n - 2}.example.com"))
        for what, host in cases:
            out[f"route ({n} hosts, {what})"] = per_call_us(
                lambda t=table, h={"host": host}: t.decide("GET", "/", h, "127.0.0.1", 0.5)
            )
    return out


def parse_cost() -> float:
    sink = _Sink()
    parser = httptools.HttpRequestParser(sink)
    return per_call_us(lambda: parser.feed_data(REQUEST))


def header_cost() -> float:
    table = table_for(scenarios.by_name(("small",))[0])
    route = table.route("default")
    sink = _Sink()
    httptools.HttpRequestParser(sink).feed_data(REQUEST[:-2] + b"\r\n")

    policy = hdr.build_policy([route.headers])  # built once per route by the server

    def both() -> None:
        hdr.request_lines(sink.headers, frozenset(), b"127.0.0.1", b"http", b"0" * 32, policy)
        hdr.response_lines(RESPONSE_HEADERS, frozenset(), policy, None)

    return per_call_us(both)


def metrics_costs() -> dict[str, float]:
    out = {}
    for compat in (frozenset(), frozenset({"istio", "http"})):
        m = ProxyMetrics(CollectorRegistry(), compat)
        label = "metrics observe" + (" (compat)" if compat else "")
        out[label] = per_call_us(lambda m=m: m.observe("default", "", "v1", 200, 0.0004))
    return out


def send_cost(size: int = 160) -> float:
    """One small send() on loopback TCP, the peer draining outside the timed part."""
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    payload = b"x" * size
    n = 2000

    def batch() -> None:
        for _ in range(n):
            a.send(payload)

    total = 0.0
    for _ in range(20):
        total += timeit.timeit(batch, number=1)
        while True:
            got = b.recv(1 << 20)
            if len(got) < 1 << 20:
                break
    for s in (a, b, srv):
        s.close()
    return total / (20 * n) * 1e6


def run() -> dict[str, float]:
    out = {"parse (httptools + callbacks)": parse_cost()}
    out.update(route_costs())
    out.update(host_costs())
    out["header blocks (request_lines + response_lines)"] = header_cost()
    out.update(metrics_costs())
    out["one send() syscall, 160 B loopback"] = send_cost()
    return out


def main() -> int:
    for name, us in run().items():
        print(f"{us:8.2f} µs  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
