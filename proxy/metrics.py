"""Every metric canaryproxy exports, on an injected registry (SPEC §4).

Request counts and latencies are the hot path: one `observe` per proxied request.
They are kept in plain per-(route, version) series objects found through one dict
lookup, and turned into Prometheus families only when /metrics is scraped. That is
cheaper than prometheus_client's locked child objects, and the same numbers feed the
canary controller's `snapshot` and the `status` rates without reading private fields.
The compat families (istio, http) are aggregated from the same series at scrape
time, so they cost nothing per request.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.workers.counts import EMPTY_COUNTS, Counts, MergeState, SeriesCounts, new_counts

# Seconds. Dense enough that histogram_quantile resolves a P99 from 1 ms to 10 s
# within one bucket of about 1.5x.
BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
_LE_S = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
_LE_MS = [floatToGoString(b * 1000) for b in BUCKETS] + ["+Inf"]
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "no_healthy")


@dataclass(frozen=True)
class VersionSnapshot:
    """Cumulative counters of one (route, version) at one instant; diff two for a window."""

    total: int
    errors: int  # responses with status >= 500
    buckets: tuple[tuple[float, int], ...]  # (upper bound in seconds, cumulative count)
    sum: float  # seconds

    def minus(self, older: VersionSnapshot) -> VersionSnapshot:
        """The window between `older` and self."""
        buckets = tuple(
            (le, n - o) for (le, n), (_, o) in zip(self.buckets, older.buckets, strict=True)
        )
        return VersionSnapshot(
            self.total - older.total, self.errors - older.errors, buckets, self.sum - older.sum
        )


EMPTY = VersionSnapshot(0, 0, tuple((b, 0) for b in (*BUCKETS, float("inf"))), 0.0)


def quantile(snap: VersionSnapshot, q: float) -> float | None:
    """Seconds at quantile q, interpolated inside the bucket (as PromQL histogram_quantile).

    None when the window holds no request. Past the last finite bound: that bound.
    """
    if snap.total <= 0:
        return None
    rank = q * snap.total
    prev_le, prev_n = 0.0, 0
    for le, n in snap.buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le
            width = n - prev_n
            return prev_le + (le - prev_le) * ((rank - prev_n) / width if width else 1.0)
        prev_le, prev_n = le, n
    return prev_le


class _Series:
    """Counters of one (route, version): per status code, per latency bucket, sum."""

    __slots__ = ("route", "service", "version", "codes", "counts", "sum", "total", "errors")

    def __init__(self, route: str, service: str, version: str) -> None:
        self.route, self.service, self.version = route, service, version
        self.codes: dict[int, int] = {}
        self.counts = [0] * (len(BUCKETS) + 1)  # not cumulative; last is +Inf
        self.sum = 0.0
        self.total = 0
        self.errors = 0

    def cumulative(self) -> list[int]:
        out, acc = [], 0
        for n in self.counts:
            acc += n
            out.append(acc)
        return out

    def snapshot(self) -> VersionSnapshot:
        bounds = (*BUCKETS, float("inf"))
        return VersionSnapshot(
            self.total, self.errors, tuple(zip(bounds, self.cumulative(), strict=True)), self.sum
        )


class _RequestCollector:
    """Turns the series into Prometheus families at scrape time."""

    def __init__(self, series: dict[tuple[str, str], _Series], compat: frozenset[str]) -> None:
        self._series = series
        self._compat = compat

    def collect(self) -> Iterator[Metric]:
        series = list(self._series.values())
        yield _requests_family(series)
        yield _duration_family(series)
        if "istio" in self._compat:
            yield from _istio_families(series)
        if "http" in self._compat:
            yield from _http_families(series)


def _requests_family(series: list[_Series]) -> Metric:
    fam = CounterMetricFamily(
        "canaryproxy_requests", "Requests by route, version and status code",
        labels=["route", "version", "code"],
    )  # fmt: skip
    for s in series:
        for code, n in sorted(s.codes.items()):
            fam.add_metric([s.route, s.version, str(code)], n)
    return fam


def _duration_family(series: list[_Series]) -> Metric:
    fam = HistogramMetricFamily(
        "canaryproxy_request_duration_seconds",
        "Time from request received to response headers sent upstream-side, seconds",
        labels=["route", "version"],
    )
    for s in series:
        fam.add_metric([s.route, s.version], list(zip(_LE_S, s.cumulative(), strict=True)), s.sum)
    return fam


def _sum_by(series: list[_Series], key: str) -> dict[tuple[str, ...], _Series]:
    """Aggregate series sharing (service, version) or (version,) for the compat families."""
    out: dict[tuple[str, ...], _Series] = {}
    for s in series:
        k = (s.service, s.version) if key == "service" else (s.version,)
        agg = out.get(k)
        if agg is None:
            agg = out[k] = _Series("", s.service, s.version)
        for code, n in s.codes.items():
            agg.codes[code] = agg.codes.get(code, 0) + n
        agg.counts = [a + b for a, b in zip(agg.counts, s.counts, strict=True)]
        agg.sum += s.sum
    return out


def _istio_families(series: list[_Series]) -> Iterator[Metric]:
    labels = ["destination_service", "destination_version"]
    req = CounterMetricFamily(
        "istio_requests", "Requests (Istio standard metric)", labels=[*labels, "response_code"]
    )
    dur = HistogramMetricFamily(
        "istio_request_duration_milliseconds", "Request duration (Istio), ms", labels=labels
    )
    for (service, version), s in _sum_by(series, "service").items():
        for code, n in sorted(s.codes.items()):
            req.add_metric([service, version, str(code)], n)
        dur.add_metric(
            [service, version], list(zip(_LE_MS, s.cumulative(), strict=True)), s.sum * 1000
        )
    yield req
    yield dur


def _http_families(series: list[_Series]) -> Iterator[Metric]:
    req = CounterMetricFamily("http_requests", "Requests by version", labels=["version", "status"])
    dur = HistogramMetricFamily(
        "http_request_duration_seconds", "Request duration by version", labels=["version"]
    )
    for (version,), s in _sum_by(series, "version").items():
        for code, n in sorted(s.codes.items()):
            req.add_metric([version, str(code)], n)
        dur.add_metric([version], list(zip(_LE_S, s.cumulative(), strict=True)), s.sum)
    yield req
    yield dur


class RateTracker:
    """Per-version rps, error % and P99 over the last few seconds, for `status`.

    `tick(now)` keeps one snapshot per call (call it about once a second); `rates`
    diffs the newest live values against the oldest kept snapshot.
    """

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._ticks: deque[tuple[float, dict[tuple[str, str], VersionSnapshot]]] = deque()

    def tick(self, now: float, snaps: dict[tuple[str, str], VersionSnapshot]) -> None:
        self._ticks.append((now, snaps))
        while len(self._ticks) > 1 and now - self._ticks[0][0] > self.window:
            self._ticks.popleft()

    def rates(self, key: tuple[str, str], now: float, live: VersionSnapshot) -> dict[str, float]:
        if self._ticks:
            t0, snaps = self._ticks[0]
            old = snaps.get(key, EMPTY)
        else:
            t0, old = now, EMPTY
        win = live.minus(old)
        elapsed = max(now - t0, 1e-9)
        p99 = quantile(win, 0.99)
        return {
            "rps": round(win.total / elapsed, 2) if now > t0 else 0.0,
            "error_pct": round(100.0 * win.errors / win.total, 2) if win.total else 0.0,
            "p99_ms": round(p99 * 1000, 2) if p99 is not None else 0.0,
            "requests": live.total,
        }


class ProxyMetrics:
    """All series of SPEC §4; `compat` may hold "istio" and/or "http"."""

    def __init__(self, registry: CollectorRegistry, compat: frozenset[str] = frozenset()) -> None:
        self.registry = registry
        self._series: dict[tuple[str, str], _Series] = {}
        registry.register(_RequestCollector(self._series, compat))  # type: ignore[arg-type]
        self._define(registry)
        self._err_children: dict[tuple[str, str], Counter] = {}
        self._mirror_children: dict[tuple[str, str], Counter] = {}
        # Plain copies of the two rare-path counters, so a worker can ship them.
        self._err_counts: dict[tuple[str, str], int] = {}
        self._mirror_counts: dict[tuple[str, str], int] = {}
        self._merged = MergeState()
        self.rates = RateTracker()

    def _define(self, r: CollectorRegistry) -> None:
        self.upstream_errors = Counter(
            "canaryproxy_upstream_errors", "Proxy-side upstream failures by version and reason",
            ["version", "reason"], registry=r,
        )  # fmt: skip
        self.mirrored_requests = Counter(
            "canaryproxy_mirrored_requests", "Requests copied to a mirror subset",
            ["route", "version"], registry=r,
        )  # fmt: skip
        self.route_weight = Gauge(
            "canaryproxy_route_weight", "Effective weight of each version of a route",
            ["route", "version"], registry=r,
        )  # fmt: skip
        self.canary_weight = Gauge(
            "canaryproxy_canary_weight", "Canary's current traffic weight, percent", ["canary"],
            registry=r,
        )  # fmt: skip
        self.canary_status = Gauge(
            "canaryproxy_canary_status", "0 idle/progressing, 1 succeeded, 2 failed", ["canary"],
            registry=r,
        )  # fmt: skip
        self.canary_check = Gauge(
            "canaryproxy_canary_check_value", "Last value of each analysis check",
            ["canary", "metric"], registry=r,
        )  # fmt: skip
        self.config_reloads = Counter(
            "canaryproxy_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.upstream_healthy = Gauge(
            "canaryproxy_upstream_healthy", "1 when an endpoint is healthy, else 0",
            ["version", "endpoint"], registry=r,
        )  # fmt: skip
        for result in ("ok", "rejected"):
            self.config_reloads.labels(result)

    # -- hot path ---------------------------------------------------------------------

    def observe(self, route: str, service: str, version: str, code: int, seconds: float) -> None:
        """Count one answered request. `version` "" for requests with no subset (404)."""
        s = self._series.get((route, version))
        if s is None:
            s = self._series[(route, version)] = _Series(route, service or route, version)
        s.codes[code] = s.codes.get(code, 0) + 1
        s.counts[bisect_left(BUCKETS, seconds)] += 1
        s.sum += seconds
        s.total += 1
        if code >= 500:
            s.errors += 1

    def upstream_error(self, version: str, reason: str) -> None:
        child = self._err_children.get((version, reason))
        if child is None:
            child = self._err_children[(version, reason)] = self.upstream_errors.labels(
                version, reason
            )
        child.inc()
        key = (version, reason)
        self._err_counts[key] = self._err_counts.get(key, 0) + 1

    def mirrored(self, route: str, version: str) -> None:
        child = self._mirror_children.get((route, version))
        if child is None:
            child = self._mirror_children[(route, version)] = self.mirrored_requests.labels(
                route, version
            )
        child.inc()
        key = (route, version)
        self._mirror_counts[key] = self._mirror_counts.get(key, 0) + 1

    # -- across processes (serve --workers N) ---------------------------------------------

    def export_counts(self) -> Counts:
        """Plain, picklable cumulative counts of this process, for the supervisor to merge."""
        series = {
            k: SeriesCounts(s.service, dict(s.codes), tuple(s.counts), s.sum)
            for k, s in list(self._series.items())
        }
        return Counts(series, dict(self._err_counts), dict(self._mirror_counts))

    def merge(self, source: int, counts: Counts) -> None:
        """Add what process `source` counted since its previous report.

        Reports are cumulative per process, so the supervisor adds differences: a lost
        report is made up by the next one, and a restarted worker (a new `source`) starts
        from zero without taking anything away from the totals.
        """
        last = self._merged.last.get(source, EMPTY_COUNTS)
        for key, now in counts.series.items():
            self._add_series(key, now, last.series.get(key))
        for (version, reason), n in new_counts(counts.errors, last.errors):
            self.upstream_errors.labels(version, reason).inc(n)
        for (route, version), n in new_counts(counts.mirrored, last.mirrored):
            self.mirrored_requests.labels(route, version).inc(n)
        self._merged.last[source] = counts

    def retire(self, source: int) -> None:
        """`source` has exited after its last report: its counts stay in the totals."""
        self._merged.last.pop(source, None)

    def _add_series(
        self, key: tuple[str, str], now: SeriesCounts, old: SeriesCounts | None
    ) -> None:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(key[0], now.service or key[0], key[1])
        before = old or SeriesCounts(now.service, {}, (0,) * len(now.counts), 0.0)
        for code, n in now.codes.items():
            d = n - before.codes.get(code, 0)
            if d:
                s.codes[code] = s.codes.get(code, 0) + d
                s.total += d
                if code >= 500:
                    s.errors += d
        for i, (n, o) in enumerate(zip(now.counts, before.counts, strict=True)):
            s.counts[i] += n - o
        s.sum += now.sum - before.sum

    # -- reads ------------------------------------------------------------------------

    def snapshot(self, route: str, version: str) -> VersionSnapshot:
        s = self._series.get((route, version))
        return s.snapshot() if s is not None else EMPTY

    def snapshots(self) -> dict[tuple[str, str], VersionSnapshot]:
        return {k: s.snapshot() for k, s in list(self._series.items())}

    def tick(self, now: float | None = None) -> None:
        """Keep a snapshot for the `status` rates; called about once a second."""
        self.rates.tick(time.monotonic() if now is None else now, self.snapshots())

    def version_rates(self, route: str, version: str, now: float | None = None) -> dict:
        t = time.monotonic() if now is None else now
        return self.rates.rates((route, version), t, self.snapshot(route, version))

    # -- gauges -----------------------------------------------------------------------

    def set_route_weights(self, weights: Mapping[str, Mapping[str, float]]) -> None:
        """Replace every route weight: versions no longer routed disappear."""
        self.route_weight.clear()
        for route, by_subset in weights.items():
            for subset, w in by_subset.items():
                self.route_weight.labels(route, subset).set(w)

    def update_route_weights(
        self, old: Mapping[str, Mapping[str, float]], new: Mapping[str, Mapping[str, float]]
    ) -> None:
        """Move the gauges from `old` (what they show now) to `new`, touching only what
        differs: relabelling 1,000 routes costs ~15 ms of event-loop time."""
        for route, by_subset in old.items():
            keep = new.get(route, {})
            for subset in by_subset:
                if subset not in keep:
                    self.route_weight.remove(route, subset)
        for route, by_subset in new.items():
            prev = old.get(route, {})
            if by_subset != prev:
                for subset, w in by_subset.items():
                    if prev.get(subset) != w:
                        self.route_weight.labels(route, subset).set(w)

    def set_canary(self, canary: str, weight: float, status: int) -> None:
        self.canary_weight.labels(canary).set(weight)
        self.canary_status.labels(canary).set(status)

    def set_canary_check(self, canary: str, metric: str, value: float) -> None:
        self.canary_check.labels(canary, metric).set(value)

    def reload(self, result: str) -> None:
        self.config_reloads.labels(result).inc()

    def set_upstream_health(self, health: Iterable[tuple[str, str, bool]]) -> None:
        """Replace the health gauge with (version, endpoint, healthy) triples."""
        self.upstream_healthy.clear()
        for version, endpoint, healthy in health:
            self.upstream_healthy.labels(version, endpoint).set(1 if healthy else 0)
