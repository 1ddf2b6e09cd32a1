"""The built-in P99 against known latency distributions, and the exported buckets kept as
they were: fine in-process buckets must change what `status` and the analysis report,
never what /metrics exports."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.canary import analysis
from proxy.canary.collect import to_window
from proxy.metrics import BUCKETS, FINE_BUCKETS, ProxyMetrics, fine_quantile, quantile

# What /metrics has exported since the first release; PromQL out there depends on every one.
EXPORTED_LE = [
    "0.001", "0.002", "0.003", "0.005", "0.0075", "0.01", "0.015", "0.02", "0.03", "0.05",
    "0.075", "0.1", "0.15", "0.2", "0.3", "0.5", "0.75", "1.0", "1.5", "2.0", "3.0", "5.0",
    "7.5", "10.0", "+Inf",
]  # fmt: skip
EXPORTED_LE_MS = [
    "1.0", "2.0", "3.0", "5.0", "7.5", "10.0", "15.0", "20.0", "30.0", "50.0", "75.0",
    "100.0", "150.0", "200.0", "300.0", "500.0", "750.0", "1000.0", "1500.0", "2000.0",
    "3000.0", "5000.0", "7500.0", "10000.0", "+Inf",
]  # fmt: skip


def _fixed(seconds: float) -> Callable[[random.Random], float]:
    return lambda _: seconds


def _bimodal(r: random.Random) -> float:
    return r.uniform(0.004, 0.006) if r.random() < 0.97 else r.uniform(1.8, 2.2)


DISTRIBUTIONS: dict[str, Callable[[random.Random], float]] = {
    "fixed 800 ms": _fixed(0.8),
    "fixed 1.2 ms": _fixed(0.0012),
    "fixed 42 ms": _fixed(0.042),
    "fixed 20 s (past the last exported bound)": _fixed(20.0),
    "uniform 100-300 ms": lambda r: r.uniform(0.1, 0.3),
    "lognormal, median 50 ms": lambda r: r.lognormvariate(math.log(0.05), 0.8),
    "lognormal, median 400 ms": lambda r: r.lognormvariate(math.log(0.4), 0.3),
    "97 % at 5 ms, 3 % at 2 s": _bimodal,
}


def _true_p99(latencies: list[float]) -> float:
    """The sample's 99th percentile: the smallest value with 99 % of the sample at or below."""
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def _draw(name: str, n: int = 4000) -> list[float]:
    rng = random.Random(name)
    return [DISTRIBUTIONS[name](rng) for _ in range(n)]


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_every_builtin_p99_is_within_5_percent_of_the_truth(name: str) -> None:
    latencies = _draw(name)
    truth = _true_p99(latencies)
    m = ProxyMetrics(CollectorRegistry())
    m.tick(now=100.0, wall=1000.0)
    before = m.snapshot("r", "v2")
    for seconds in latencies:
        m.observe("r", "", "v2", 200, seconds)
    snap = m.snapshot("r", "v2")
    window = analysis.delta(to_window(snap), to_window(before))
    reported = {
        "quantile(snapshot)": quantile(snap, 0.99),
        "status p99_ms": m.version_rates("r", "v2", now=104.0)["p99_ms"] / 1000,
        "analysis request-duration": (analysis.p99_ms(window) or 0.0) / 1000,
    }
    for where, value in reported.items():
        assert value == pytest.approx(truth, rel=0.05), (where, value, truth)


@pytest.mark.parametrize("name", ["fixed 800 ms", "lognormal, median 50 ms"])
def test_p99_stays_fine_through_workers_merged_by_the_supervisor(name: str) -> None:
    latencies = _draw(name)
    workers = [ProxyMetrics(CollectorRegistry()) for _ in range(3)]
    sup = ProxyMetrics(CollectorRegistry())
    for i, seconds in enumerate(latencies):
        workers[i % 3].observe("r", "", "v2", 200, seconds)
        if i % 500 == 0:  # reports arrive while the workers keep counting
            sup.merge(i % 3, workers[i % 3].export_counts())
    for pid, w in enumerate(workers):
        sup.merge(pid, w.export_counts())
    snap = sup.snapshot("r", "v2")
    assert snap.total == len(latencies)
    assert quantile(snap, 0.99) == pytest.approx(_true_p99(latencies), rel=0.05)


def test_the_old_exported_buckets_alone_are_far_off_at_800_ms() -> None:
    """Why the built-in checks read fine buckets: over the exported ones 800 ms reads ~1 s."""
    m = ProxyMetrics(CollectorRegistry())
    for _ in range(100):
        m.observe("r", "", "v2", 200, 0.8)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())
    }
    exported = tuple(
        (float(s.labels["le"]), s.value)
        for s in families["canaryproxy_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    )
    assert analysis.quantile(0.99, exported) == pytest.approx(0.9975)
    assert quantile(m.snapshot("r", "v2"), 0.99) == pytest.approx(0.8, rel=0.03)


def test_fine_buckets_refine_the_exported_ones_a_few_percent_wide() -> None:
    assert set(BUCKETS) <= set(FINE_BUCKETS)
    assert FINE_BUCKETS[0] == 0.001 and FINE_BUCKETS[-1] == 60.0
    assert all(a < b for a, b in zip(FINE_BUCKETS, FINE_BUCKETS[1:], strict=False))
    assert max(b / a for a, b in zip(FINE_BUCKETS, FINE_BUCKETS[1:], strict=False)) <= 1.031


def _buckets(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], list[tuple[str, float]]]]:
    """family -> labels without le -> [(le, cumulative count)] in exposition order."""
    out: dict[str, dict[tuple[tuple[str, str], ...], list[tuple[str, float]]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                out.setdefault(s.name, {}).setdefault(key, []).append((s.labels["le"], s.value))
    return out


def test_metrics_export_exactly_the_old_buckets_with_exact_counts() -> None:
    rng = random.Random(7)
    latencies = [rng.lognormvariate(math.log(0.05), 1.5) for _ in range(3000)]
    latencies += [*BUCKETS, 0.0, 10.5, 61.0]  # on each bound (le is inclusive) and past them
    m = ProxyMetrics(CollectorRegistry(), frozenset({"istio", "http"}))
    for seconds in latencies:
        m.observe("default", "shop", "v1", 200, seconds)
    found = _buckets(generate_latest(m.registry).decode())
    assert set(found) == {
        "canaryproxy_request_duration_seconds_bucket",
        "istio_request_duration_milliseconds_bucket",
        "http_request_duration_seconds_bucket",
    }
    want = [sum(1 for x in latencies if x <= b) for b in BUCKETS] + [len(latencies)]
    for name, by_labels in found.items():
        (series,) = by_labels.values()
        le = [le for le, _ in series]
        assert le == (EXPORTED_LE_MS if name.startswith("istio") else EXPORTED_LE), name
        assert [n for _, n in series] == want, name


@given(
    st.lists(st.floats(0.0, 80.0, allow_nan=False), min_size=1, max_size=60),
    st.sampled_from([0.5, 0.9, 0.99, 1.0]),
)
def test_fine_quantile_answers_as_quantile_does(latencies: list[float], q: float) -> None:
    m = ProxyMetrics(CollectorRegistry())
    for seconds in latencies:
        m.observe("r", "", "v1", 200, seconds)
    snap = m.snapshot("r", "v1")
    below = ((0.0, 0), *snap.buckets[:-1])
    per_bucket = [n - o for (_, n), (_, o) in zip(snap.buckets, below, strict=True)]
    assert fine_quantile(per_bucket, q) == pytest.approx(quantile(snap, q))
