"""`python -m benchmarks.report_costs`: what one worker -> supervisor report costs.

Under `serve --workers N` each worker sends its counts every 250 ms (`workers/wire.py`,
`Report`) and the supervisor merges them into its ProxyMetrics. This builds a worker with
`--routes` routes of two versions each, every series already holding `--history` requests
(so the latency buckets are as spread as a long-running worker's), then times, for each
report, the worker's `export_counts()` + `frame()` (the pickle), and the supervisor's
`pickle.loads` and `merge`. Medians over `--reports` reports, in ms, and the frame size.

Two loads between reports: every series counted `--new` requests (a busy worker, the worst
case), and one series in ten did (most routes idle for a quarter of a second). Compare two
source trees by running it in each: `cd /tmp/old && python -m benchmarks.report_costs`.
"""

from __future__ import annotations

import argparse
import pickle
import random
import statistics
import sys
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry

from proxy.metrics import ProxyMetrics
from proxy.workers.wire import Report, frame

PID = 4242


def _latencies(rnd: random.Random) -> Iterator[float]:
    """Upstream answers: log-normal around 5 ms, a few slow ones past a second."""
    while True:
        yield rnd.lognormvariate(-5.3, 0.8) if rnd.random() > 0.001 else rnd.uniform(1, 30)


def _keys(routes: int) -> list[tuple[str, str]]:
    return [(f"route-{i}", v) for i in range(routes) for v in ("v1", "v2")]


def _count(m: ProxyMetrics, keys: list[tuple[str, str]], n: int, lat: Iterator[float]) -> None:
    for route, version in keys:
        for _ in range(n):
            seconds = next(lat)
            m.observe(route, route, version, 503 if seconds > 1 else 200, seconds)


def measure(routes: int, history: int, new: int, share: float, reports: int) -> dict[str, float]:
    rnd = random.Random(1)
    lat = _latencies(rnd)
    keys = _keys(routes)
    worker, supervisor = ProxyMetrics(CollectorRegistry()), ProxyMetrics(CollectorRegistry())
    _count(worker, keys, history, lat)
    supervisor.merge(PID, pickle.loads(frame(Report(PID, worker.export_counts()))[4:]).counts)
    times: dict[str, list[float]] = {"export+pickle": [], "unpickle": [], "merge": []}
    sizes = []
    for _ in range(reports):
        _count(worker, rnd.sample(keys, max(1, int(len(keys) * share))), new, lat)
        t0 = time.perf_counter()
        data = frame(Report(PID, worker.export_counts()))
        t1 = time.perf_counter()
        report = pickle.loads(data[4:])
        t2 = time.perf_counter()
        supervisor.merge(report.pid, report.counts)
        t3 = time.perf_counter()
        for name, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            times[name].append(dt * 1000)
        sizes.append(len(data))
    out = {f"{name} ms": statistics.median(ts) for name, ts in times.items()}
    out["frame KiB"] = statistics.median(sizes) / 1024
    w, s = worker.snapshots(), supervisor.snapshots()
    assert all(w[k].buckets == s[k].buckets and w[k].total == s[k].total for k in w), "merge"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report_costs")
    ap.add_argument("--routes", type=int, default=1000)
    ap.add_argument("--history", type=int, default=2000, help="requests per series at start")
    ap.add_argument("--new", type=int, default=5, help="requests per busy series per report")
    ap.add_argument("--reports", type=int, default=21)
    args = ap.parse_args(argv)
    print(f"{args.routes} routes x 2 versions, {args.history} requests per series at start")
    for share in (1.0, 0.1):
        got = measure(args.routes, args.history, args.new, share, args.reports)
        figures = "  ".join(f"{name} {v:7.2f}" for name, v in got.items())
        print(f"{share:4.0%} of series counted {args.new} new: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
