"""Fleet-wide counters for the controller's judgement (`provider: {type: fleet}`).

Each replica publishes its cumulative per-(route, version) counters in its member document
with a `boot` id (new at every start). The leader adds up every member's: a window is only
judged when the same members (same boots) counted at its start and at its end; otherwise
a replica joined, left or restarted (its counters went back to zero) and the window is
inconclusive: the controller holds, it never fails on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from proxy.metrics_buckets import EMPTY, VersionSnapshot

Members = frozenset[tuple[str, str]]  # (replica, boot)


def encode(snapshots: Mapping[tuple[str, str], VersionSnapshot]) -> dict[str, list]:
    """{"route\\tversion": [total, errors, sum, [bucket counts]]}; quiet series left out."""
    return {
        f"{route}\t{version}": [s.total, s.errors, round(s.sum, 6), [n for _, n in s.buckets]]
        for (route, version), s in snapshots.items()
        if s.total
    }


def decode(counters: Mapping[str, list], route: str, version: str) -> VersionSnapshot:
    row = counters.get(f"{route}\t{version}")
    if not row or len(row[3]) != len(EMPTY.buckets):
        return EMPTY
    total, errors, seconds, counts = row
    buckets = tuple((le, int(n)) for (le, _), n in zip(EMPTY.buckets, counts, strict=True))
    return VersionSnapshot(int(total), int(errors), buckets, float(seconds))


def add(a: VersionSnapshot, b: VersionSnapshot) -> VersionSnapshot:
    buckets = tuple((le, n + m) for (le, n), (_, m) in zip(a.buckets, b.buckets, strict=True))
    return VersionSnapshot(a.total + b.total, a.errors + b.errors, buckets, a.sum + b.sum)


def fleet_snapshot(members: Iterable[Mapping], route: str, version: str) -> VersionSnapshot:
    """The sum over every member document's counters."""
    out = EMPTY
    for m in members:
        out = add(out, decode(m.get("counters") or {}, route, version))
    return out


def members_of(members: Iterable[Mapping]) -> Members:
    return frozenset((str(m.get("replica", "")), str(m.get("boot", ""))) for m in members)
