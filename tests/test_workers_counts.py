"""Sparse worker reports: only the latency buckets that moved travel, and the supervisor's
totals come out exactly as if one process had counted every request."""

from __future__ import annotations

import pickle
import random

import pytest
from prometheus_client import CollectorRegistry

from proxy.metrics import FINE_BUCKETS, ProxyMetrics
from proxy.workers.counts import Counts, SeriesCounts
from proxy.workers.wire import Report, frame

KEYS = [(route, version) for route in ("web", "api", "img") for version in ("v1", "v2")]


def _wire(pid: int, m: ProxyMetrics) -> Counts:
    """A report as the supervisor gets it: through pickle, as `frame` sends it."""
    report = pickle.loads(frame(Report(pid, m.export_counts()))[4:])
    return report.counts


def _samples(m: ProxyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in m.registry.collect()
        for s in family.samples
    }


def test_sparse_reports_merge_to_the_totals_of_one_process() -> None:
    rnd = random.Random(7)
    direct = ProxyMetrics(CollectorRegistry())  # what the dense reports added up to
    sup = ProxyMetrics(CollectorRegistry())
    workers = {1: ProxyMetrics(CollectorRegistry()), 2: ProxyMetrics(CollectorRegistry())}
    next_pid = 3
    for round_ in range(40):
        for w in workers.values():
            keys = KEYS[:4] if round_ < 10 else KEYS  # two series appear later
            for route, version in rnd.sample(keys, rnd.randrange(len(keys) + 1)):
                for _ in range(rnd.randrange(1, 30)):
                    seconds = rnd.lognormvariate(-4, 1.5) if rnd.random() > 0.02 else 90.0
                    code = rnd.choice((200, 200, 200, 404, 503))
                    w.observe(route, route, version, code, seconds)
                    direct.observe(route, route, version, code, seconds)
            if rnd.random() < 0.2:
                version = rnd.choice(("v1", "v2"))
                w.upstream_error(version, "connect")
                direct.upstream_error(version, "connect")
        for pid, w in list(workers.items()):
            counts = _wire(pid, w)
            sup.merge(pid, counts)
            if round_ % 7 == 3:
                sup.merge(pid, counts)  # the same report twice counts once
        if round_ == 20:  # worker 1 exits after its last report; a new one counts from zero
            sup.retire(1)
            del workers[1]
            workers[next_pid] = ProxyMetrics(CollectorRegistry())
            next_pid += 1
    for pid, w in workers.items():
        sup.merge(pid, _wire(pid, w))

    got, want = sup.snapshots(), direct.snapshots()
    assert got.keys() == want.keys() == set(KEYS)
    for key in KEYS:
        assert got[key].buckets == want[key].buckets, key
        assert (got[key].total, got[key].errors) == (want[key].total, want[key].errors)
        assert got[key].sum == pytest.approx(want[key].sum)
    assert _samples(sup) == pytest.approx(_samples(direct))


def test_a_report_carries_only_the_buckets_that_moved() -> None:
    w = ProxyMetrics(CollectorRegistry())
    for i in range(200):
        w.observe("web", "web", "v1", 200, FINE_BUCKETS[i])
        w.observe("web", "web", "v2", 200, FINE_BUCKETS[i])
    first = _wire(1, w).series
    assert len(first[("web", "v1")].at) == 200
    w.observe("web", "web", "v1", 200, FINE_BUCKETS[5])
    w.observe("web", "web", "v1", 503, FINE_BUCKETS[5])
    w.observe("web", "web", "v1", 200, FINE_BUCKETS[300])
    counts = w.export_counts()
    v1, v2 = counts.series[("web", "v1")], counts.series[("web", "v2")]
    assert sorted(zip(v1.at, v1.added, strict=True)) == [(5, 2), (300, 1)]
    assert v1.codes == {200: 202, 503: 1}  # codes and sums stay cumulative
    assert (v2.at, v2.added, v2.codes) == ((), (), {200: 200})
    assert w.export_counts().series[("web", "v2")] is v2  # a quiet series costs nothing new


def test_the_first_report_of_a_series_builds_it_whole() -> None:
    w = ProxyMetrics(CollectorRegistry())
    for seconds in (0.001, 0.001, 0.2, 90.0):
        w.observe("web", "web", "v1", 200, seconds)
    sup = ProxyMetrics(CollectorRegistry())
    sup.merge(9, _wire(9, w))
    assert sup.snapshot("web", "v1") == w.snapshot("web", "v1")


def test_a_report_counted_on_other_buckets_is_refused() -> None:
    sup = ProxyMetrics(CollectorRegistry())
    other = Counts({("web", "v1"): SeriesCounts("web", {200: 1}, (3,), (1,), 0.1)}, {}, {}, 25)
    with pytest.raises(ValueError, match="25 latency buckets reported"):
        sup.merge(1, other)
    assert sup.snapshot("web", "v1").total == 0


def test_the_report_cost_benchmark_runs_and_its_merge_adds_up() -> None:
    from benchmarks.report_costs import measure

    got = measure(routes=5, history=50, new=3, share=0.5, reports=3)  # asserts the merge
    assert got["frame KiB"] > 0 and got["merge ms"] >= 0
