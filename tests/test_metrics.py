"""Metric names, labels and values after known traffic, read back from the text format."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import BUCKETS, EMPTY, ProxyMetrics, VersionSnapshot, quantile


def _samples(reg: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(reg).decode()
    out: dict[tuple[str, frozenset], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _traffic(m: ProxyMetrics) -> None:
    for _ in range(90):
        m.observe("default", "shop", "v1", 200, 0.004)
    for _ in range(8):
        m.observe("default", "shop", "v2", 200, 0.040)
    for _ in range(2):
        m.observe("default", "shop", "v2", 503, 2.5)
    m.observe("default", "shop", "", 404, 0.0001)


def test_request_counts_and_histogram_after_known_traffic() -> None:
    reg = CollectorRegistry()
    m = ProxyMetrics(reg)
    _traffic(m)
    s = _samples(reg)
    assert _get(s, "canaryproxy_requests_total", route="default", version="v1", code="200") == 90
    assert _get(s, "canaryproxy_requests_total", route="default", version="v2", code="503") == 2
    assert _get(s, "canaryproxy_requests_total", route="default", version="", code="404") == 1
    h = "canaryproxy_request_duration_seconds"
    assert _get(s, h + "_count", route="default", version="v2") == 10
    assert _get(s, h + "_bucket", route="default", version="v2", le="0.05") == 8
    assert _get(s, h + "_bucket", route="default", version="v2", le="2.0") == 8
    assert _get(s, h + "_bucket", route="default", version="v2", le="3.0") == 10
    assert _get(s, h + "_bucket", route="default", version="v1", le="0.003") == 0
    assert _get(s, h + "_bucket", route="default", version="v1", le="0.005") == 90
    assert _get(s, h + "_sum", route="default", version="v2") == pytest.approx(8 * 0.04 + 5.0)


def test_no_compat_series_unless_asked() -> None:
    reg = CollectorRegistry()
    _traffic(ProxyMetrics(reg))
    names = {name for name, _ in _samples(reg)}
    assert not any(n.startswith(("istio_", "http_")) for n in names)


def test_istio_and_http_compat_series() -> None:
    reg = CollectorRegistry()
    m = ProxyMetrics(reg, frozenset({"istio", "http"}))
    _traffic(m)
    m.observe("other", "", "v2", 200, 0.001)  # service "" means the route name
    s = _samples(reg)
    ist = "istio_requests_total"
    assert (
        _get(s, ist, destination_service="shop", destination_version="v2", response_code="503") == 2
    )
    assert (
        _get(s, ist, destination_service="other", destination_version="v2", response_code="200")
        == 1
    )
    b = "istio_request_duration_milliseconds_bucket"
    assert _get(s, b, destination_service="shop", destination_version="v2", le="50.0") == 8
    assert _get(s, b, destination_service="shop", destination_version="v2", le="+Inf") == 10
    assert _get(s, "http_requests_total", version="v2", status="200") == 9
    assert _get(s, "http_request_duration_seconds_bucket", version="v2", le="0.001") == 1
    assert _get(s, "http_request_duration_seconds_count", version="v1") == 90


def test_errors_mirrors_gauges_and_reloads() -> None:
    reg = CollectorRegistry()
    m = ProxyMetrics(reg)
    m.upstream_error("v2", "connect")
    m.upstream_error("v2", "connect")
    m.mirrored("default", "v2")
    m.set_route_weights({"default": {"v1": 90, "v2": 10}})
    m.set_route_weights({"default": {"v1": 100}})
    m.set_canary("default", 20, 0)
    m.set_canary_check("default", "error-rate", 0.5)
    m.reload("rejected")
    m.set_upstream_health([("v1", "127.0.0.1:9001", True), ("v2", "127.0.0.1:9002", False)])
    s = _samples(reg)
    assert _get(s, "canaryproxy_upstream_errors_total", version="v2", reason="connect") == 2
    assert _get(s, "canaryproxy_mirrored_requests_total", route="default", version="v2") == 1
    assert _get(s, "canaryproxy_route_weight", route="default", version="v1") == 100
    assert (
        "canaryproxy_route_weight",
        frozenset({("route", "default"), ("version", "v2")}),
    ) not in s
    assert _get(s, "canaryproxy_canary_weight", canary="default") == 20
    assert _get(s, "canaryproxy_canary_status", canary="default") == 0
    assert _get(s, "canaryproxy_canary_check_value", canary="default", metric="error-rate") == 0.5
    assert _get(s, "canaryproxy_config_reloads_total", result="rejected") == 1
    assert _get(s, "canaryproxy_config_reloads_total", result="ok") == 0
    assert _get(s, "canaryproxy_upstream_healthy", version="v2", endpoint="127.0.0.1:9002") == 0


def test_snapshot_is_cumulative_and_diffs_to_a_window() -> None:
    m = ProxyMetrics(CollectorRegistry())
    assert m.snapshot("default", "v2") == EMPTY
    _traffic(m)
    first = m.snapshot("default", "v2")
    assert (first.total, first.errors) == (10, 2)
    assert first.buckets[-1] == (math.inf, 10)
    m.observe("default", "shop", "v2", 500, 0.001)
    win = m.snapshot("default", "v2").minus(first)
    assert (win.total, win.errors) == (1, 1)
    assert win.buckets[0] == (0.001, 1)
    assert win.sum == pytest.approx(0.001)


@pytest.mark.parametrize("seconds", [0.0008, 0.004, 0.12, 1.1, 9.0])
def test_p99_resolves_within_one_bucket(seconds: float) -> None:
    m = ProxyMetrics(CollectorRegistry())
    for _ in range(100):
        m.observe("r", "", "v1", 200, seconds)
    p99 = quantile(m.snapshot("r", "v1"), 0.99)
    assert p99 is not None
    upper = next(b for b in BUCKETS if b >= seconds)
    lower = max([0.0, *[b for b in BUCKETS if b < seconds]])
    assert lower <= p99 <= upper


def test_quantile_of_empty_window_is_none() -> None:
    assert quantile(EMPTY, 0.99) is None
    only_inf = VersionSnapshot(1, 0, tuple((b, 0) for b in BUCKETS) + ((math.inf, 1),), 20.0)
    assert quantile(only_inf, 0.99) == BUCKETS[-1]


def test_rates_over_the_window() -> None:
    m = ProxyMetrics(CollectorRegistry())
    m.tick(100.0)
    for _ in range(50):
        m.observe("default", "", "v2", 200, 0.010)
    for _ in range(50):
        m.observe("default", "", "v2", 500, 0.010)
    r = m.version_rates("default", "v2", now=102.0)
    assert r["rps"] == 50.0
    assert r["error_pct"] == 50.0
    assert 7.5 <= r["p99_ms"] <= 10.0
    assert r["requests"] == 100
    m.tick(110.0)
    m.tick(111.0)
    assert m.version_rates("default", "v2", now=112.0)["rps"] == 0.0
