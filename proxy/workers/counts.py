"""Counts as a worker process ships them to the supervisor (`serve --workers N`).

Plain and picklable. Per series the status codes and the latency sum are cumulative since
the worker started; the latency buckets are sparse: only those counted into since the
previous report, and by how much. A series has ~380 fine buckets and most of them do not
change in the 250 ms between two reports: sending all of them made a report of 1,000
two-version routes 1.6 MB, ~29 ms to build and pickle and ~33 ms to merge; sparse it is
~175 KB, ~14 ms and ~6 ms (`python -m benchmarks.report_costs`).

ProxyMetrics.merge adds the difference between two reports of the same process. A bucket's
increase is sent once, so every report is merged, in order: they travel on one stream, and
a worker that cannot send exits (its replacement is a new process, counted from zero).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import repeat
from operator import sub
from typing import TypeVar

K = TypeVar("K")  # a counter's key


@dataclass(frozen=True)
class SeriesCounts:
    """One (route, version) series as plain data."""

    service: str
    codes: dict[int, int]  # per status code, cumulative
    at: tuple[int, ...]  # the latency buckets counted into since the previous report...
    added: tuple[int, ...]  # ...and how many requests each of them got since then
    sum: float  # seconds, cumulative


@dataclass(frozen=True)
class Counts:
    """Everything a worker process counts."""

    series: dict[tuple[str, str], SeriesCounts]
    errors: dict[tuple[str, str], int]  # (version, reason) -> n, cumulative
    mirrored: dict[tuple[str, str], int]  # (route, version) -> n, cumulative
    buckets: int  # latency buckets per series in the worker: `at` indexes these
    tunnels: dict[tuple[str, str], int] = field(default_factory=dict)  # opened, cumulative
    tunnels_open: dict[tuple[str, str], int] = field(default_factory=dict)  # open now
    # ("handshake", listener, reason) / ("reload", listener, result) -> n, cumulative
    tls: dict[tuple[str, str, str], int] = field(default_factory=dict)


EMPTY_COUNTS = Counts({}, {}, {}, 0)


class SeriesReport:
    """Worker side, one series: what its next report carries.

    The hot path adds a bucket's index to `touched` (a set: at most one entry per bucket,
    also in a process that never reports); `take` turns them into the buckets' increases
    and starts over. A report then costs what changed, not every bucket of every series,
    and a series that counted nothing since the last one is the same object as then.
    """

    __slots__ = ("touched", "_reported", "_quiet")

    def __init__(self) -> None:
        self.touched: set[int] = set()
        self._reported: dict[int, int] = {}  # bucket -> its count as last reported
        self._quiet: SeriesCounts | None = None

    def take(
        self, service: str, codes: dict[int, int], counts: list[int], seconds: float
    ) -> SeriesCounts:
        """The series whose per-bucket counts are `counts` now, for the next report."""
        if not self.touched:
            if self._quiet is None:
                self._quiet = SeriesCounts(service, dict(codes), (), (), seconds)
            return self._quiet
        self._quiet = None
        at = tuple(self.touched)
        self.touched.clear()
        now = tuple(map(counts.__getitem__, at))
        added = tuple(map(sub, now, map(self._reported.get, at, repeat(0))))
        self._reported.update(zip(at, now, strict=True))
        return SeriesCounts(service, dict(codes), at, added, seconds)


def add_buckets(counts: list[int], series: SeriesCounts) -> None:
    """Supervisor side: add a report's increases to per-bucket `counts`."""
    for i, n in zip(series.at, series.added, strict=True):
        counts[i] += n


@dataclass
class MergeState:
    """The last report of each live worker process, by PID."""

    last: dict[int, Counts] = field(default_factory=dict)


def new_counts(now: dict[K, int], old: dict[K, int]) -> Iterator[tuple[K, int]]:
    """(key, increase) of each counter that grew since `old`."""
    for key, n in now.items():
        d = n - old.get(key, 0)
        if d > 0:
            yield key, d
