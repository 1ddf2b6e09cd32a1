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

The parts: metrics_buckets (bounds, snapshots, quantiles), metrics_counters (a series'
counters, the families at scrape time), metrics_history (the status rates window and the
15-minute ring); workers/counts is what a worker ships and the supervisor merges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from proxy.metrics_buckets import (
    BUCKETS,
    EMPTY,
    FINE_BUCKETS,
    FINE_INF,
    FINE_RATIO,
    FINE_TOP,
    VersionSnapshot,
    fine_bounds,
    fine_quantile,
    quantile,
)
from proxy.metrics_counters import RequestCollector, Series
from proxy.metrics_history import NO_COUNTS, RateTracker, Raw, SeriesRing, window_rates
from proxy.workers.counts import (
    EMPTY_COUNTS,
    Counts,
    MergeState,
    SeriesCounts,
    add_buckets,
    new_counts,
)

# Re-exported: callers and tests import these from proxy.metrics.
__all__ = [
    "BUCKETS",
    "EMPTY",
    "FINE_BUCKETS",
    "FINE_RATIO",
    "FINE_TOP",
    "UPSTREAM_ERROR_REASONS",
    "ProxyMetrics",
    "RateTracker",
    "Raw",
    "SeriesRing",
    "VersionSnapshot",
    "fine_bounds",
    "fine_quantile",
    "quantile",
    "window_rates",
]

UPSTREAM_ERROR_REASONS: Final = ("connect", "timeout", "reset", "no_healthy")
_FINE: Final = list(FINE_BUCKETS)  # a static in the compiled build, not a global lookup


def bucket_index(seconds: float) -> int:
    """`bisect_left(FINE_BUCKETS, seconds)`, as a loop the compiled build runs on C doubles
    (bisect compares Python floats through the generic protocol, ~9 times per request)."""
    lo, hi = 0, len(_FINE)
    while lo < hi:
        mid = (lo + hi) // 2
        if _FINE[mid] < seconds:
            lo = mid + 1
        else:
            hi = mid
    return lo


class ProxyMetrics:
    """All series of SPEC §4; `compat` may hold "istio" and/or "http"."""

    def __init__(self, registry: CollectorRegistry, compat: frozenset[str] = frozenset()) -> None:
        self.registry = registry
        self.open_tunnels: dict[tuple[str, str], int] = {}  # (route, version) -> open now
        self.opened_tunnels: dict[tuple[str, str], int] = {}  # ... -> opened, cumulative
        self._tls_counts: dict[tuple[str, str, str], int] = {}  # workers.counts.Counts.tls
        self._series: dict[tuple[str, str], Series] = {}
        registry.register(RequestCollector(self._series, compat))  # type: ignore[arg-type]
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
        self.tls_handshake_errors = Counter(
            "canaryproxy_tls_handshake_errors", "Failed TLS handshakes by listener and reason",
            ["listener", "reason"], registry=r,
        )  # fmt: skip
        self.tls_reloads = Counter(
            "canaryproxy_tls_certificate_reloads", "TLS listener certificate reloads by result",
            ["listener", "result"], registry=r,
        )  # fmt: skip
        self.tunnels_active = Gauge(
            "canaryproxy_tunnels_active", "Upgraded (WebSocket) tunnels open now",
            ["route", "version"], registry=r,
        )  # fmt: skip
        self.tunnels_total = Counter(
            "canaryproxy_tunnels", "Upgraded (WebSocket) tunnels opened after a 101",
            ["route", "version"], registry=r,
        )  # fmt: skip

    # -- hot path ---------------------------------------------------------------------

    def observe(self, route: str, service: str, version: str, code: int, seconds: float) -> None:
        """Count one answered request. `version` "" for requests with no subset (404)."""
        s = self._series.get((route, version))
        if s is None:
            s = self._series[(route, version)] = Series(route, service or route, version)
        s.codes[code] = s.codes.get(code, 0) + 1
        i = bucket_index(seconds)
        s.counts[i] += 1
        s.touched.add(i)  # for the next worker report: ~15 ns here, no scan of ~380 there
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
        """Plain, picklable counts of this process, for the supervisor to merge: cumulative,
        but of the latency buckets only what was counted since the previous export, so
        every export must reach the supervisor (see workers/counts.py)."""
        series = {
            k: s.report.take(s.service, s.codes, s.counts, s.sum)
            for k, s in list(self._series.items())
        }
        errors, mirrored = dict(self._err_counts), dict(self._mirror_counts)
        tunnels = dict(self.opened_tunnels), dict(self.open_tunnels)
        tls = dict(self._tls_counts)
        return Counts(series, errors, mirrored, len(FINE_INF), *tunnels, tls=tls)

    def merge(self, source: int, counts: Counts) -> None:
        """Add what process `source` counted since its previous report.

        Codes, sums and the rare-path counters are cumulative per process, so the
        supervisor adds differences, and a restarted worker (a new `source`) starts from
        zero without taking anything away from the totals. A report whose codes have not
        moved adds nothing, so merging one report twice counts it once.
        """
        if counts.series and counts.buckets != len(FINE_INF):
            raise ValueError(f"{counts.buckets} latency buckets reported, {len(FINE_INF)} kept")
        last = self._merged.last.get(source, EMPTY_COUNTS)
        for key, now in counts.series.items():
            self._add_series(key, now, last.series.get(key))
        for (version, reason), n in new_counts(counts.errors, last.errors):
            self.upstream_errors.labels(version, reason).inc(n)
        for (route, version), n in new_counts(counts.mirrored, last.mirrored):
            self.mirrored_requests.labels(route, version).inc(n)
        for (route, version), n in new_counts(counts.tunnels, last.tunnels):
            self.tunnels_total.labels(route, version).inc(n)
        self._add_open(counts.tunnels_open, last.tunnels_open)
        for (kind, listener, why), n in new_counts(counts.tls, last.tls):
            self._tls_counter(kind).labels(listener, why).inc(n)
        self._merged.last[source] = counts

    def _add_open(self, now: dict[tuple[str, str], int], old: dict[tuple[str, str], int]) -> None:
        """A worker's open tunnels moved from `old` to `now`: the gauge follows the sum."""
        for key in now.keys() | old.keys():
            d = now.get(key, 0) - old.get(key, 0)
            if d:
                self.tunnels_active.labels(*key).inc(d)
                self.open_tunnels[key] = self.open_tunnels.get(key, 0) + d

    def retire(self, source: int) -> None:
        """`source` has exited after its last report: its counts stay in the totals."""
        last = self._merged.last.pop(source, None)
        if last is not None:
            self._add_open({}, last.tunnels_open)  # its tunnels ended with it

    def _add_series(
        self, key: tuple[str, str], now: SeriesCounts, old: SeriesCounts | None
    ) -> None:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = Series(key[0], now.service or key[0], key[1])
        before = old or SeriesCounts(now.service, {}, (), (), 0.0)
        if now.codes == before.codes:
            return
        for code, n in now.codes.items():
            d = n - before.codes.get(code, 0)
            if d:
                s.codes[code] = s.codes.get(code, 0) + d
        add_buckets(s.counts, now)
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
            rows = {k: window_rates(r, before.get(k, NO_COUNTS), t - t0) for k, r in raws.items()}
            self.history.add(time.time() if wall is None else wall, rows)
            self._sampled = (t, raws)

    def version_rates(self, route: str, version: str, now: float | None = None) -> dict:
        t = time.monotonic() if now is None else now
        s = self._series.get((route, version))
        return self.rates.rates((route, version), t, s.raw() if s is not None else NO_COUNTS)

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

    def tunnel_opened(self, route: str, version: str) -> None:
        self.tunnels_total.labels(route, version).inc()
        self.tunnels_active.labels(route, version).inc()
        key = (route, version)
        self.open_tunnels[key] = self.open_tunnels.get(key, 0) + 1
        self.opened_tunnels[key] = self.opened_tunnels.get(key, 0) + 1

    def tunnel_closed(self, route: str, version: str) -> None:
        self.tunnels_active.labels(route, version).dec()
        key = (route, version)
        self.open_tunnels[key] = self.open_tunnels.get(key, 1) - 1

    def tunnels(self, route: str) -> dict[str, int]:
        """Open tunnels of `route` by version (this process's data plane), for the status."""
        return {v: n for (r, v), n in self.open_tunnels.items() if r == route and n > 0}

    def tls_handshake_error(self, listener: str, reason: str) -> None:
        self._tls_count("handshake", listener, reason)

    def tls_reload(self, listener: str, result: str) -> None:
        """A TLS listener's certificates reloaded: result "ok" | "rejected" (old ones kept)."""
        self._tls_count("reload", listener, result)

    def _tls_count(self, kind: str, listener: str, why: str) -> None:
        self._tls_counter(kind).labels(listener, why).inc()
        key = (kind, listener, why)
        self._tls_counts[key] = self._tls_counts.get(key, 0) + 1

    def _tls_counter(self, kind: str) -> Counter:
        return self.tls_handshake_errors if kind == "handshake" else self.tls_reloads

    def set_upstream_health(self, health: Iterable[tuple[str, str, bool]]) -> None:
        """Replace the health gauge with (version, endpoint, healthy) triples."""
        self.upstream_healthy.clear()
        for version, endpoint, healthy in health:
            self.upstream_healthy.labels(version, endpoint).set(1 if healthy else 0)
