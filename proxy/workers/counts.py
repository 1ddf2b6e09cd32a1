"""Counts as a worker process ships them to the supervisor (`serve --workers N`).

Plain, picklable, cumulative since the worker started; ProxyMetrics.merge adds the
difference between two reports of the same process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SeriesCounts:
    """One (route, version) series as plain data: per code, per bucket (not cumulative), sum."""

    service: str
    codes: dict[int, int]
    counts: tuple[int, ...]
    sum: float


@dataclass(frozen=True)
class Counts:
    """Everything a worker process counts, cumulative since it started."""

    series: dict[tuple[str, str], SeriesCounts]
    errors: dict[tuple[str, str], int]  # (version, reason) -> n
    mirrored: dict[tuple[str, str], int]  # (route, version) -> n


EMPTY_COUNTS = Counts({}, {}, {})


@dataclass
class MergeState:
    """The last report of each live worker process, by PID."""

    last: dict[int, Counts] = field(default_factory=dict)


def new_counts(
    now: dict[tuple[str, str], int], old: dict[tuple[str, str], int]
) -> Iterator[tuple[tuple[str, str], int]]:
    """(key, increase) of each counter that grew since `old`."""
    for key, n in now.items():
        d = n - old.get(key, 0)
        if d > 0:
            yield key, d
