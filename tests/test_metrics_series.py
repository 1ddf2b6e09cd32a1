"""The dashboard's history ring: one sample per 5 s, 15 minutes kept, on injected clocks."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from proxy.metrics import ProxyMetrics, SeriesRing

WALL = 1_767_225_600.0  # unix time when the monotonic clock below reads 0


def _run(m: ProxyMetrics, start: int, stop: int, per_second: int = 0) -> None:
    """Tick once a second from `start` to `stop` (exclusive), with traffic in between."""
    for t in range(start, stop):
        m.tick(now=float(t), wall=WALL + t)
        for i in range(per_second):
            m.observe("default", "shop", "v2", 503 if i % 5 == 0 else 200, 0.2)


def _points(m: ProxyMetrics, route: str = "default", version: str = "v2") -> list[list[float]]:
    (found,) = [
        s["points"] for s in m.series()["series"] if (s["route"], s["version"]) == (route, version)
    ]
    return found


def test_one_sample_every_5_seconds_with_the_status_rates() -> None:
    m = ProxyMetrics(CollectorRegistry())
    shown = {}
    for t in range(16):
        m.tick(now=float(t), wall=WALL + t)
        r = m.version_rates("default", "v2", now=float(t))
        shown[WALL + t] = [r["rps"], r["error_pct"], r["p99_ms"]]
        for i in range(10):
            m.observe("default", "shop", "v2", 503 if i % 5 == 0 else 200, 0.2)
    points = _points(m)
    assert [p[0] for p in points] == [WALL + 5, WALL + 10, WALL + 15]
    for t, rps, error_pct, p99_ms in points:
        assert [rps, error_pct, p99_ms] == shown[t]  # what `status` showed at that instant
        assert (rps, error_pct) == (10.0, 20.0)
        assert p99_ms == pytest.approx(200.0, rel=0.03)


def test_the_ring_keeps_15_minutes_and_drops_the_oldest() -> None:
    m = ProxyMetrics(CollectorRegistry())
    m.observe("default", "shop", "v2", 200, 0.01)
    _run(m, 0, 2000)
    points = _points(m)
    assert len(points) == 180
    assert [p[0] for p in points] == [WALL + t for t in range(1100, 2000, 5)]
    assert points[-1][0] - points[0][0] == 895.0


def test_a_late_tick_takes_one_sample_and_keeps_the_pace() -> None:
    m = ProxyMetrics(CollectorRegistry())
    sent = 0
    for t in (0.0, 1.0, 32.5, 33.5, 37.4, 37.6, 42.6):
        m.tick(now=t, wall=WALL + t)
        for _ in range(13):
            m.observe("default", "shop", "v2", 200, 0.01)
        sent += 13
    points = _points(m)
    assert [p[0] for p in points] == [WALL + 32.5, WALL + 37.6, WALL + 42.6]
    # the points tile the time since the first tick: every request is in exactly one
    spans = [32.5, 5.1, 5.0]
    assert [round(p[1] * dt) for p, dt in zip(points, spans, strict=True)] == [26, 39, 13]
    assert sum(round(p[1] * dt) for p, dt in zip(points, spans, strict=True)) == sent - 13


def test_a_later_series_lines_up_with_the_newest_samples() -> None:
    m = ProxyMetrics(CollectorRegistry())
    m.observe("default", "shop", "v1", 200, 0.01)
    _run(m, 0, 11)
    m.observe("default", "shop", "v2", 200, 0.01)
    _run(m, 11, 21)
    v1, v2 = _points(m, version="v1"), _points(m, version="v2")
    assert [p[0] for p in v1] == [WALL + 5, WALL + 10, WALL + 15, WALL + 20]
    assert [p[0] for p in v2] == [WALL + 15, WALL + 20]
    assert v2[0][1] == pytest.approx(0.2)  # one request in the 5 s before WALL + 15
    assert v1[-1][1:] == [0.0, 0.0, 0.0]  # idle: no requests, no error %, no P99


def test_series_shape_is_plain_json() -> None:
    m = ProxyMetrics(CollectorRegistry())
    assert m.series(wall=WALL) == {
        "interval_s": 5.0,
        "window_s": 900.0,
        "now": WALL,
        "series": [],
    }
    _run(m, 0, 6, per_second=4)
    m.observe("", "", "", 404, 0.0001)  # no route matched: counted, and charted
    _run(m, 6, 11)
    body = json.loads(json.dumps(m.series(wall=WALL + 11)))
    assert body["now"] == WALL + 11
    assert [(s["route"], s["version"]) for s in body["series"]] == [("", ""), ("default", "v2")]
    p99 = pytest.approx(200, rel=0.03)
    assert body["series"][1]["points"] == [[WALL + 5, 4.0, 25.0, p99], [WALL + 10, 0.8, 25.0, p99]]


def test_ring_alone_pads_a_series_missing_from_a_sample() -> None:
    ring = SeriesRing(interval=5.0, size=3)
    assert [ring.due(t) for t in (10.0, 14.9, 15.0, 16.0, 20.0)] == [
        False,
        False,
        True,
        False,
        True,
    ]
    ring.add(1.0, {("r", "a"): (1.0, 0.0, 5.0)})
    ring.add(2.0, {("r", "b"): (2.0, 50.0, 7.0)})
    ring.add(3.0, {("r", "a"): (3.0, 0.0, 9.0), ("r", "b"): (4.0, 0.0, 8.0)})
    ring.add(4.0, {})
    assert ring.to_json() == [
        {"route": "r", "version": "a", "points": [[2.0, 0, 0, 0], [3.0, 3, 0, 9], [4.0, 0, 0, 0]]},
        {"route": "r", "version": "b", "points": [[2.0, 2, 50, 7], [3.0, 4, 0, 8], [4.0, 0, 0, 0]]},
    ]
