"""Rates over time: the few seconds `status` shows, and the 15 minutes of GET /api/v1/series.

Both keep compact copies of the counters (`Raw`) and diff two of them; neither reads a
clock: the caller passes the monotonic and unix times in.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Mapping
from operator import sub
from typing import NamedTuple

from proxy.metrics_buckets import FINE_INF, fine_quantile


class Raw(NamedTuple):
    """One series' cumulative counters, compact: what the rate window keeps each second."""

    total: int
    errors: int
    counts: tuple[int, ...]  # per FINE_BUCKETS bucket and +Inf, not cumulative
    sum: float


NO_COUNTS = Raw(0, 0, (0,) * len(FINE_INF), 0.0)


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
            old = raws.get(key, NO_COUNTS)
        else:
            t0, old = now, NO_COUNTS
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
