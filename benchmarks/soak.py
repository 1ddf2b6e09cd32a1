"""Soak run (RELIABILITY run L9): steady mixed load with reloads and upstream restarts.

Starts two recording upstreams and the real proxy on free ports, sends open-loop
GET/POST traffic (1 KiB bodies, a share of slow requests), reloads the config and
restarts one upstream now and then, and samples the proxy every few seconds:
RSS (/proc/PID/status), open fds (/proc/PID/fd), threads, and the asyncio task count
when the admin status exposes one. Memory growth is the slope of a linear fit of RSS
after the warm-up, in KiB per minute; a leak keeps a positive slope while Python's
allocator plateaus.

    python benchmarks/soak.py                 # 10 minutes
    python benchmarks/soak.py --seconds 60    # the CI version

Prints one JSON summary; exit 0 when the slope is under --max-slope KiB/min, the fd
count does not grow, and every request sent was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault.harness import (  # noqa: E402
    Load,
    ProxyProcess,
    UpstreamProcess,
    admin_post,
    config_text,
    fetch,
    summarize,
    write_atomic,
)


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and R² of ys over xs (0, 0 with fewer than 3 points)."""
    n = len(xs)
    if n < 3:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    r2 = (sxy * sxy) / (sxx * syy) if syy else 1.0
    return slope, r2


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


async def _task_count(admin_port: int) -> int:
    """The admin status' task count if it exposes one (`tasks`), else -1."""
    try:
        _, _, body = await fetch(admin_port, "GET", "/api/v1/status")
        value = json.loads(body).get("tasks", -1)
        return int(value) if isinstance(value, int | float) else -1
    except (OSError, ValueError, TimeoutError):
        return -1


async def sample(proxy: ProxyProcess, every: float, until: float, out: Samples) -> None:
    t0 = time.monotonic()
    while time.monotonic() < until and proxy.alive():
        out.t.append(time.monotonic() - t0)
        out.rss_kib.append(proxy.rss_kib())
        out.fds.append(proxy.fd_count())
        out.threads.append(_threads(proxy.pid))
        out.tasks.append(await _task_count(proxy.admin_port))
        await asyncio.sleep(every)


async def reloader(proxy: ProxyProcess, ups: dict[str, str], every: float, until: float) -> int:
    n = 0
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        w = 90 if n % 2 else 70
        text = config_text(proxy.port, proxy.admin_port, ups, {"v1": w, "v2": 100 - w})
        write_atomic(proxy.config_path, text)
        status, _ = await admin_post(proxy.admin_port, "/api/v1/reload")
        n += status == 200
    return n


async def restarter(victim: UpstreamProcess, every: float, until: float) -> int:
    n = 0
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        victim.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(victim.start)
        n += 1
    return n


def report(s: Samples, warmup: float, counts: dict[str, Any], extra: dict[str, Any]) -> dict:
    idx = [i for i, t in enumerate(s.t) if t >= warmup]
    xs = [s.t[i] / 60 for i in idx]
    slope, r2 = linear_fit(xs, [float(s.rss_kib[i]) for i in idx])
    fd_slope, _ = linear_fit(xs, [float(s.fds[i]) for i in idx])
    tasks = [x for x in s.tasks if x >= 0]
    return {
        "rss_slope_kib_per_min": round(slope, 1),
        "rss_r2": round(r2, 3),
        "rss_kib_first_last": [s.rss_kib[0], s.rss_kib[-1]] if s.rss_kib else [],
        "fds_min_max": [min(s.fds), max(s.fds)] if s.fds else [],
        "fds_after_warmup_first_last": [s.fds[idx[0]], s.fds[idx[-1]]] if idx else [],
        "fd_slope_per_min": round(fd_slope, 2),
        "threads_min_max": [min(s.threads), max(s.threads)] if s.threads else [],
        "tasks_min_max": [min(tasks), max(tasks)] if tasks else "not exposed",
        "samples": len(s.t),
        **counts,
        **extra,
    }


async def soak(args: argparse.Namespace, work: Path) -> dict:
    v1 = UpstreamProcess("v1", work / "v1.jsonl").start()
    v2 = UpstreamProcess("v2", work / "v2.jsonl").start()
    proxy = ProxyProcess(work / "proxy")
    ups = {"v1": v1.address, "v2": v2.address}
    proxy.config = config_text(proxy.port, proxy.admin_port, ups, {"v1": 90, "v2": 10})
    try:
        proxy.start()
        return await _run(args, proxy, v1, v2, ups)
    finally:
        proxy.stop()
        v1.stop()
        v2.stop()


async def _run(
    args: argparse.Namespace,
    proxy: ProxyProcess,
    v1: UpstreamProcess,
    v2: UpstreamProcess,
    ups: dict[str, str],
) -> dict:
    until = time.monotonic() + args.seconds
    fast = Load(proxy.port, args.rate * (1 - args.slow_share), args.seconds, "soak-f", 2, 1024)
    slow = Load(proxy.port, args.rate * args.slow_share, args.seconds, "soak-s", 0)
    slow.path = "/slow?ms=500"
    samples = Samples()
    jobs = [
        fast.run_load(),
        slow.run_load(),
        sample(proxy, args.sample_every, until, samples),
        reloader(proxy, ups, args.reload_every, until),
        restarter(v2, args.restart_every, until),
    ]
    _, _, _, reloads, restarts = await asyncio.gather(*jobs)
    counts = summarize(fast.ledger + slow.ledger, [v1, v2], "soak")
    counts.pop("error_window")
    counts["duplicated"] = len(counts["duplicated"])
    counts["duplicated_posts"] = len(counts["duplicated_posts"])
    extra = {"reloads": reloads, "upstream_restarts": restarts, "seconds": args.seconds}
    extra["rate"] = args.rate
    return report(samples, args.warmup, counts, extra)


def verdict(result: dict, max_slope: float) -> list[str]:
    problems = []
    if result["rss_slope_kib_per_min"] >= max_slope:
        problems.append(f"RSS grows {result['rss_slope_kib_per_min']} KiB/min")
    first, last = result["fds_after_warmup_first_last"] or [0, 0]
    if last > first + 4 and result["fd_slope_per_min"] > 1:
        problems.append(f"fds grow {first} -> {last}")
    if result["sent"] != result["answered"]:
        problems.append(f"sent {result['sent']} != answered {result['answered']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--rate", type=float, default=150, help="requests per second")
    p.add_argument("--slow-share", type=float, default=0.05, help="share of slow requests")
    p.add_argument("--reload-every", type=float, default=30)
    p.add_argument("--restart-every", type=float, default=120, help="v2 kill -9 + restart")
    p.add_argument("--sample-every", type=float, default=5)
    p.add_argument("--warmup", type=float, default=None, help="s; default min(120, 1/4 run)")
    p.add_argument("--max-slope", type=float, default=100, help="KiB/min")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(120.0, args.seconds / 4)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    problems = verdict(result, args.max_slope)
    result["problems"] = problems
    print(json.dumps(result, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
