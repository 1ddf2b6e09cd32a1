"""Every metric canaryproxy exports, on an injected registry (SPEC §4).

Request counts and latencies are the hot path: one `observe` per proxied request.
They are kept in plain per-(route, version) series objects found through one dict
lookup, and turned into Prometheus families only when /metrics is scraped. That is
cheaper than prometheus_client's locked child objects, and the same numbers feed the
canary controller's `snapshot` and the `status` rates without reading private fields.
Latencies are counted in fine buckets (FINE_BUCKETS, at most 3 % wide, up to 60 s) so
that the built-in P99 is close to the truth; /metrics sums them into the exported
BUCKETS, which never change. The compat families (istio, http) are aggregated from the
same series at scrape time, so they cost nothing per request. `tick` also keeps the
last 15 minutes of rates per series for the dashboard (`series`).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from operator import add, itemgetter, sub
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.workers.counts import EMPTY_COUNTS, Counts, MergeState, SeriesCounts, new_counts

# Seconds. The bounds /metrics exports: users' PromQL and recording rules are written
# against these `le` values, so they never change. histogram_quantile over them resolves a
# P99 only to about 1.5x (a fixed 800 ms reads as ~998 ms).
BUCKETS: tuple[float, ...] = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
FINE_TOP = 60.0  # seconds: the slowest answer the built-in P99 still resolves
FINE_RATIO = 1.03  # widest fine bucket: upper bound / lower bound


def fine_bounds(exported: tuple[float, ...], top: float, ratio: float) -> tuple[float, ...]:
    """Every exported bound, and log-spaced bounds between them (and on to `top`), no two
    more than `ratio` apart; 4 significant digits. A refinement of `exported`, so the
    exported buckets are sums of fine ones and need no counters of their own."""
    out = [exported[0]]
    for lo, hi in zip(exported, (*exported[1:], top), strict=True):
        n = math.ceil(math.log(hi / lo) / math.log(ratio))
        out += [float(f"{lo * (hi / lo) ** (i / n):.4g}") for i in range(1, n)]
        out.append(hi)
    return tuple(out)


# Seconds. What the built-in checks read (status p99_ms, request-duration, snapshots):
# ~380 bounds, so a P99 interpolated inside one bucket is off by at most 3 %.
FINE_BUCKETS = fine_bounds(BUCKETS, FINE_TOP, FINE_RATIO)
_FINE_INF = (*FINE_BUCKETS, math.inf)
# Cumulative fine counts at these indices are the exported buckets (+Inf is the last).
_EXPORTED_AT = itemgetter(*(FINE_BUCKETS.index(b) for b in BUCKETS), len(FINE_BUCKETS))
_LE_S = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
_LE_MS = [floatToGoString(b * 1000) for b in BUCKETS] + ["+Inf"]
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset", "no_healthy")


@dataclass(frozen=True)
class VersionSnapshot:
    """Cumulative counters of one (route, version) at one instant; diff two for a window.

    A snapshot of ProxyMetrics has one bucket per FINE_BUCKETS bound and +Inf.
    """

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


EMPTY = VersionSnapshot(0, 0, tuple((b, 0) for b in _FINE_INF), 0.0)


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
            if le == math.inf:
                return prev_le
            width = n - prev_n
            return prev_le + (le - prev_le) * ((rank - prev_n) / width if width else 1.0)
        prev_le, prev_n = le, n
    return prev_le


def fine_quantile(counts: Iterable[int], q: float) -> float | None:
    """`quantile` for 0 < q <= 1 over per-bucket (not cumulative) counts on FINE_BUCKETS
    and +Inf: the same answer, found by accumulate and bisect (loops in C), since `status`
    asks it of every version of every route each second."""
    cum = list(accumulate(counts))
    if not cum or cum[-1] <= 0:
        return None
    rank = q * cum[-1]
    if rank <= 0:  # the lower bound of the first bucket holding a request
        i = bisect_right(cum, 0)
        return FINE_BUCKETS[i - 1] if i else 0.0
    i = bisect_left(cum, rank)
    if i == len(FINE_BUCKETS):  # in +Inf: the highest finite bound, as Prometheus does
        return FINE_BUCKETS[-1]
    lower, below = (FINE_BUCKETS[i - 1], cum[i - 1]) if i else (0.0, 0)
    return lower + (FINE_BUCKETS[i] - lower) * (rank - below) / (cum[i] - below)


class Raw(NamedTuple):
    """One series' cumulative counters, compact: what the rate window keeps each second."""

    total: int
    errors: int
    counts: tuple[int, ...]  # per FINE_BUCKETS bucket and +Inf, not cumulative
    sum: float


_NO_COUNTS = Raw(0, 0, (0,) * len(_FINE_INF), 0.0)


class _Series:
    """Counters of one (route, version): per status code, per fine latency bucket, sum.

    Totals and errors are sums over `codes`, worked out when read, so that `observe`
    stays at one dict update, one list increment and one float add.
    """

    __slots__ = ("route", "service", "version", "codes", "counts", "sum", "_raw")

    def __init__(self, route: str, service: str, version: str) -> None:
        self.route, self.service, self.version = route, service, version
        self.codes: dict[int, int] = {}
        self.counts = [0] * len(_FINE_INF)  # not cumulative; last is +Inf
        self.sum = 0.0
        self._raw = _NO_COUNTS

    def total(self) -> int:
        return sum(self.codes.values())

    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 500)

    def raw(self) -> Raw:
        """The counters now; the same object as last time while nothing was counted, so
        the rate window of an idle series costs no memory."""
        total = self.total()
        if total != self._raw.total:
            self._raw = Raw(total, self.errors(), tuple(self.counts), self.sum)
        return self._raw

    def exported(self) -> list[int]:
        """Cumulative counts on the exported BUCKETS and +Inf."""
        return list(_EXPORTED_AT(list(accumulate(self.counts))))

    def snapshot(self) -> VersionSnapshot:
        buckets = tuple(zip(_FINE_INF, accumulate(self.counts), strict=True))
        return VersionSnapshot(self.total(), self.errors(), buckets, self.sum)


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
        fam.add_metric([s.route, s.version], list(zip(_LE_S, s.exported(), strict=True)), s.sum)
    return fam


class _Summed:
    """Series added up for a compat family, on the exported buckets only."""

    __slots__ = ("codes", "cumulative", "sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.cumulative = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0


def _sum_by(series: list[_Series], key: str) -> dict[tuple[str, ...], _Summed]:
    """Aggregate series sharing (service, version) or (version,) for the compat families."""
    out: dict[tuple[str, ...], _Summed] = {}
    for s in series:
        k = (s.service, s.version) if key == "service" else (s.version,)
        agg = out.get(k)
        if agg is None:
            agg = out[k] = _Summed()
        for code, n in s.codes.items():
            agg.codes[code] = agg.codes.get(code, 0) + n
        agg.cumulative = list(map(add, agg.cumulative, s.exported()))
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
            [service, version], list(zip(_LE_MS, s.cumulative, strict=True)), s.sum * 1000
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
        dur.add_metric([version], list(zip(_LE_S, s.cumulative, strict=True)), s.sum)
    yield req
    yield dur


class RateTracker:
    """Per-version rps, error % and P99 over the last few seconds, for `status`.

    `tick(now)` keeps one Raw per series per call (call it about once a second); `rates`
    diffs the newest live values against the oldest kept ones.
    """

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._ticks: deque[tuple[float, dict[tuple[str, str], Raw]]] = deque()

    def tick(self, now: float, raws: dict[tuple[str, str], Raw]) -> None:
        self._ticks.append((now, raws))
        while len(self._ticks) > 1 and now - self._ticks[0][0] > self.window:
            self._ticks.popleft()

    def rates(self, key: tuple[str, str], now: float, live: Raw) -> dict[str, float]:
        if self._ticks:
            t0, raws = self._ticks[0]
            old = raws.get(key, _NO_COUNTS)
        else:
            t0, old = now, _NO_COUNTS
        rps, error_pct, p99_ms = window_rates(live, old, now - t0)
        return {"rps": rps, "error_pct": error_pct, "p99_ms": p99_ms, "requests": live.total}


def window_rates(live: Raw, old: Raw, elapsed: float) -> tuple[float, float, float]:
    """rps, error % and P99 ms between two Raws `elapsed` seconds apart; 0 for no data."""
    total, errors = live.total - old.total, live.errors - old.errors
    p99 = fine_quantile(map(sub, live.counts, old.counts), 0.99) if total else None
    return (
        round(total / elapsed, 2) if elapsed > 0 else 0.0,
        round(100.0 * errors / total, 2) if total else 0.0,
        round(p99 * 1000, 2) if p99 is not None else 0.0,
    )


class SeriesRing:
    """The last `size` samples of (rps, error %, P99 ms) of every series, one sample every
    `interval` seconds: 15 minutes of dashboard charts at the defaults.

    Pure: `due(now)` paces on a monotonic clock it is given, `add(wall, rows)` stamps the
    sample with the unix time it is given. Memory is bounded by size x series: the sample
    times are kept once, the values in one array of doubles per series.
    """

    def __init__(self, interval: float = 5.0, size: int = 180) -> None:
        self.interval, self.size = interval, size
        self.times: deque[float] = deque(maxlen=size)
        # 3 values per sample, the newest last: a series' k-th newest sample is times[-k].
        self._values: dict[tuple[str, str], array[float]] = {}
        self._next: float | None = None

    def due(self, now: float) -> bool:
        """Whether a sample is due at `now`; the first comes one interval after the first
        call, and a late call does not make the next one come sooner."""
        if self._next is None:
            self._next = now + self.interval
            return False
        if now < self._next:
            return False
        self._next += self.interval
        if self._next <= now:
            self._next = now + self.interval
        return True

    def add(self, wall: float, rows: Mapping[tuple[str, str], tuple[float, float, float]]) -> None:
        """One sample; a series known before and missing from `rows` had no traffic."""
        self.times.append(wall)
        for key in rows.keys() - self._values.keys():
            self._values[key] = array("d")
        for key, values in self._values.items():
            values.extend(rows.get(key, (0.0, 0.0, 0.0)))
            if len(values) > 3 * self.size:
                del values[:3]

    def to_json(self) -> list[dict]:
        times = list(self.times)
        out = []
        for (route, version), v in sorted(self._values.items()):
            n = len(v) // 3
            stamps = times[len(times) - n :]
            points = [
                [round(t, 3), v[3 * i], v[3 * i + 1], v[3 * i + 2]] for i, t in enumerate(stamps)
            ]
            out.append({"route": route, "version": version, "points": points})
        return out


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
        self.history = SeriesRing(interval=self.rates.window)
        self._sampled: tuple[float, dict[tuple[str, str], Raw]] | None = None  # the last sample

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
        s.counts[bisect_left(FINE_BUCKETS, seconds)] += 1
        s.sum += seconds

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
        if now.codes == before.codes:
            return
        for code, n in now.codes.items():
            d = n - before.codes.get(code, 0)
            if d:
                s.codes[code] = s.codes.get(code, 0) + d
        if len(now.counts) != len(s.counts):
            raise ValueError(f"{len(now.counts)} latency buckets reported, {len(s.counts)} kept")
        # in C: a series has ~380 buckets and every worker reports four times a second
        s.counts = list(map(add, s.counts, map(sub, now.counts, before.counts)))
        s.sum += now.sum - before.sum

    # -- reads ------------------------------------------------------------------------

    def snapshot(self, route: str, version: str) -> VersionSnapshot:
        s = self._series.get((route, version))
        return s.snapshot() if s is not None else EMPTY

    def snapshots(self) -> dict[tuple[str, str], VersionSnapshot]:
        return {k: s.snapshot() for k, s in list(self._series.items())}

    def tick(self, now: float | None = None, wall: float | None = None) -> None:
        """Keep the counters for the `status` rates and, every `history.interval` seconds,
        a sample for `series`; called about once a second. `now` is monotonic seconds (it
        paces both), `wall` the unix time a sample is stamped with."""
        t = time.monotonic() if now is None else now
        raws = {k: s.raw() for k, s in list(self._series.items())}
        self.rates.tick(t, raws)
        if self._sampled is None:
            self._sampled = (t, raws)
        if self.history.due(t):
            # Each sample covers the time since the previous one exactly, however late
            # the tick: no request falls between two points, none is in two.
            t0, before = self._sampled
            rows = {k: window_rates(r, before.get(k, _NO_COUNTS), t - t0) for k, r in raws.items()}
            self.history.add(time.time() if wall is None else wall, rows)
            self._sampled = (t, raws)

    def version_rates(self, route: str, version: str, now: float | None = None) -> dict:
        t = time.monotonic() if now is None else now
        s = self._series.get((route, version))
        return self.rates.rates((route, version), t, s.raw() if s is not None else _NO_COUNTS)

    def series(self, wall: float | None = None) -> dict:
        """The dashboard's history (GET /api/v1/series): the last 15 minutes of rps, error %
        and P99 of every (route, version), one point every 5 s, oldest first::

            {"interval_s": 5.0, "window_s": 900.0, "now": 1767225600.0,
             "series": [{"route": "default", "version": "v2",
                         "points": [[1767225595.0, 12.4, 0.0, 38.2], ...]}]}

        A point is [unix time, rps, error_pct, p99_ms] over the time since the previous
        point (5 s, or more after a stall), the rates `status` shows; error_pct and p99_ms
        are 0 without requests. `now` is the unix time of this answer, so a client can place
        the points on its own clock. A series appears after its first request; version ""
        counts the requests that had no subset.
        """
        ring = self.history
        return {
            "interval_s": ring.interval,
            "window_s": ring.interval * ring.size,
            "now": round(time.time() if wall is None else wall, 3),
            "series": ring.to_json(),
        }

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
