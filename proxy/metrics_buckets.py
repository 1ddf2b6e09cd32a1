"""Latency buckets: the exported ones, the fine ones the built-in P99 reads, and quantiles.

/metrics exports BUCKETS, which never change. Requests are counted in FINE_BUCKETS, a
refinement of BUCKETS (at most 3 % wide, up to 60 s), so that an exported bucket is a sum of
fine ones and the built-in P99 is within a few % of the truth. Pure: plain numbers in and out.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter

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
FINE_INF = (*FINE_BUCKETS, math.inf)  # the upper bound of every counted bucket
# Cumulative fine counts at these indices are the exported buckets (+Inf is the last).
EXPORTED_AT = itemgetter(*(FINE_BUCKETS.index(b) for b in BUCKETS), len(FINE_BUCKETS))


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


EMPTY = VersionSnapshot(0, 0, tuple((b, 0) for b in FINE_INF), 0.0)


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
