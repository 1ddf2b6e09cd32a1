"""The counters of each (route, version), and their Prometheus families at scrape time.

`Series` is what the hot path counts into; `RequestCollector` turns all series into the
canaryproxy request families and, when asked, the istio and http compat families, which are
sums of the same series and so cost nothing per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import accumulate
from operator import add
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.metrics_buckets import BUCKETS, EXPORTED_AT, FINE_INF, VersionSnapshot
from proxy.metrics_history import NO_COUNTS, Raw
from proxy.workers.counts import SeriesReport

_LE_S: Final = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
_LE_MS: Final = [floatToGoString(b * 1000) for b in BUCKETS] + ["+Inf"]


class Series:
    """Counters of one (route, version): per status code, per fine latency bucket, sum.

    Totals and errors are sums over `codes`, worked out when read, so that `observe`
    stays at one dict update, one list increment, one set add and one float add. The set,
    `touched`, is `report.touched` (bound here to save the hot path one lookup): the
    buckets a worker's next report must carry.
    """

    __slots__ = (
        "route", "service", "version", "codes", "counts", "sum", "report", "touched", "_raw",
    )  # fmt: skip

    def __init__(self, route: str, service: str, version: str) -> None:
        self.route, self.service, self.version = route, service, version
        self.codes: dict[int, int] = {}
        self.counts = [0] * len(FINE_INF)  # not cumulative; last is +Inf
        self.sum = 0.0
        self.report = SeriesReport()
        self.touched = self.report.touched
        self._raw = NO_COUNTS

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
        return list(EXPORTED_AT(list(accumulate(self.counts))))

    def snapshot(self) -> VersionSnapshot:
        buckets = tuple(zip(FINE_INF, accumulate(self.counts), strict=True))
        return VersionSnapshot(self.total(), self.errors(), buckets, self.sum)


class RequestCollector:
    """Turns the series into Prometheus families at scrape time."""

    def __init__(self, series: dict[tuple[str, str], Series], compat: frozenset[str]) -> None:
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


def _requests_family(series: list[Series]) -> Metric:
    fam = CounterMetricFamily(
        "canaryproxy_requests", "Requests by route, version and status code",
        labels=["route", "version", "code"],
    )  # fmt: skip
    for s in series:
        for code, n in sorted(s.codes.items()):
            fam.add_metric([s.route, s.version, str(code)], n)
    return fam


def _duration_family(series: list[Series]) -> Metric:
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


def _sum_by(series: list[Series], key: str) -> dict[tuple[str, ...], _Summed]:
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


def _istio_families(series: list[Series]) -> Iterator[Metric]:
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


def _http_families(series: list[Series]) -> Iterator[Metric]:
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
