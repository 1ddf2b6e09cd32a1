"""The cases of `python -m benchmarks.overload`: the upstreams, probes and load of each.

See benchmarks/overload.py (the entry point and the report) for what is measured.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import configs, openloop, procs, proxies, scenarios, wrk
from benchmarks.proxies import LOAD_CPU, REPO

CONCURRENCY = 20  # upstream workers
SERVICE_MS = 20.0
HANG_LIMIT = 8
HANG_TIMEOUT = 2.0
HANG_RATE = 50.0
ROUTE_TIMEOUT = 2.0
INITIAL = {"capped": 100.0, "spare": 0.0}
# Churn at 2xC: either set keeps both subsets saturated, so all N slots stay in use.
WEIGHTS = ({"capped": 95.0, "spare": 5.0}, {"capped": 90.0, "spare": 10.0})
ADMIN_PATHS = ("/api/v1/status", "/healthz")


def capacity() -> float:
    return CONCURRENCY / (SERVICE_MS / 1000)


def overload_config(port: int, admin: int, capped: int, hang: int) -> dict[str, Any]:
    """Route `app` splits over `capped` (N-1 in flight) and `spare` (1): the same upstream,
    so it never sees more than N at once, whatever the weights (100/0 outside the churn);
    `/hang` goes to the hung one."""
    ep = f"127.0.0.1:{capped}"
    return {
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "access_log": False,
        "upstreams": {
            "capped": {"endpoints": [ep], "max_requests": CONCURRENCY - 1},
            "spare": {"endpoints": [ep], "max_requests": 1},
            "hang": {"endpoints": [f"127.0.0.1:{hang}"], "max_requests": HANG_LIMIT},
        },
        "routes": [
            {
                "name": "hang",
                "match": [{"path": {"prefix": "/hang"}}],
                "route": [{"destination": "hang"}],
                "timeout": f"{HANG_TIMEOUT}s",
            },
            {
                "name": "app",
                "route": [{"destination": k, "weight": w} for k, w in INITIAL.items()],
                "timeout": f"{ROUTE_TIMEOUT}s",
            },
        ],
    }


# --------------------------------------------------------------------- probes (threads)


def http_call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    """One request on a fresh connection: (status or 0 on error, milliseconds)."""
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Authorization": f"Bearer {proxies.TOKEN}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        r.read()
        status = r.status
        c.close()
    except OSError:
        status = 0
    return status, (time.perf_counter() - t0) * 1000


class Probes:
    """Admin probes every 100 ms, weight churn every 250 ms (when on), RSS every second;
    every sample tagged with the phase it fell in."""

    def __init__(self, admin: int, pid: int, route: str = "app") -> None:
        self.admin, self.pid, self.route = admin, pid, route
        self.phase = "start"
        self.churn = False
        self.admin_samples: list[tuple[str, str, int, float]] = []
        self.churn_samples: list[tuple[str, int, float]] = []
        self.rss: list[tuple[str, float, float]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._every, args=(0.1, self._probe), daemon=True),
            threading.Thread(target=self._every, args=(0.25, self._weights), daemon=True),
            threading.Thread(target=self._every, args=(1.0, self._rss), daemon=True),
        ]
        self._began = time.monotonic()
        self._n = 0

    def __enter__(self) -> Probes:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _every(self, period: float, fn: Any) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            fn()
            due += period
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _probe(self) -> None:
        for path in ADMIN_PATHS:
            status, ms = http_call(self.admin, "GET", path)
            self.admin_samples.append((self.phase, path, status, ms))

    def _weights(self) -> None:
        if not self.churn:
            return
        self._n += 1
        body = json.dumps(WEIGHTS[self._n % 2]).encode()
        status, ms = http_call(self.admin, "PUT", f"/api/v1/routes/{self.route}/weights", body)
        self.churn_samples.append((self.phase, status, ms))

    def _rss(self) -> None:
        try:
            mb = procs.rss_mb(self.pid)
        except OSError:
            return
        self.rss.append((self.phase, round(time.monotonic() - self._began, 1), round(mb, 2)))

    def admin_summary(self, phase: str) -> dict[str, Any]:
        got = [s for s in self.admin_samples if s[0] == phase]
        ms = sorted(s[3] for s in got)
        return {
            "probes": len(got),
            "non_200": sum(1 for s in got if s[2] != 200),
            "p50_ms": round(openloop.percentile(ms, 50), 2),
            "p99_ms": round(openloop.percentile(ms, 99), 2),
            "max_ms": round(ms[-1], 2) if ms else 0.0,
            "by_path_max_ms": {
                p: round(max((s[3] for s in got if s[1] == p), default=0.0), 2) for p in ADMIN_PATHS
            },
        }

    def churn_summary(self, phase: str) -> dict[str, Any]:
        got = [s for s in self.churn_samples if s[0] == phase]
        ms = sorted(s[2] for s in got)
        statuses: dict[str, int] = {}
        for s in got:
            statuses[str(s[1])] = statuses.get(str(s[1]), 0) + 1
        return {
            "changes": len(got),
            "statuses": statuses,
            "p99_ms": round(openloop.percentile(ms, 99), 2),
            "max_ms": round(ms[-1], 2) if ms else 0.0,
        }

    def rss_summary(self, phase: str) -> dict[str, Any]:
        mb = [s[2] for s in self.rss if s[0] == phase]
        if not mb:
            return {}
        third = max(1, len(mb) // 3)
        return {
            "first_mb": mb[0],
            "max_mb": max(mb),
            "last_mb": mb[-1],
            "max_first_third_mb": max(mb[:third]),
            "max_last_third_mb": max(mb[-third:]),
            "samples": mb,
        }


# --------------------------------------------------------------------- the cases


def hang_stats(port: int) -> dict[str, Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/")
    data = json.loads(c.getresponse().read())
    c.close()
    return dict(data)


def cpu_jiffies() -> dict[str, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name != "cpu":
            v = [int(x) for x in vals]
            out[name] = (sum(v) - v[3] - v[4], sum(v))
    return out


class CpuWindow:
    """Busy share of each CPU and the proxy's CPU share over a window: was CPU 0 ours?"""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.j0, self.p0, self.t0 = cpu_jiffies(), procs.cpu_seconds(pid), time.monotonic()

    def result(self) -> dict[str, float]:
        j1, p1, wall = cpu_jiffies(), procs.cpu_seconds(self.pid), time.monotonic() - self.t0
        out = {"proxy_cpu_pct": round(100 * (p1 - self.p0) / wall, 1)}
        for cpu, (busy, total) in j1.items():
            b0, t0 = self.j0.get(cpu, (0, 0))
            out[f"{cpu}_busy_pct"] = round(100 * (busy - b0) / max(1, total - t0), 1)
        return out


def phase(probes: Probes, name: str, port: int, rate: float, seconds: float, **kw: Any) -> dict:
    probes.phase = name
    window = CpuWindow(probes.pid)
    res = openloop.run(port, rate, seconds, **kw)
    res["cpu"] = window.result()
    probes.phase = "between"
    return res


def upstream_bound(d: Path, seconds: float) -> dict[str, Any]:
    capped, hang, stats = procs.free_port(), procs.free_port(), procs.free_port()
    cmd = [sys.executable, "-m", "benchmarks.hang_upstream", "--capped-port", str(capped)]
    cmd += ["--hang-port", str(hang), "--stats-port", str(stats)]
    cmd += ["--concurrency", str(CONCURRENCY), "--service-ms", str(SERVICE_MS)]
    up = procs.start(cmd, LOAD_CPU, d / "upstream.out", cwd=REPO)
    try:
        for p in (capped, hang, stats):
            procs.wait_port(p, up)
        port, admin = procs.free_port(), procs.free_port()
        conf = configs.write_yaml(d / "overload.yaml", overload_config(port, admin, capped, hang))
        ours = proxies.start_ours_config(d, conf, port, admin)
        try:
            return _upstream_cases(ours, seconds, stats)
        finally:
            procs.stop(ours.proc)
    finally:
        procs.stop(up)


def _upstream_cases(ours: proxies.Running, seconds: float, stats: int) -> dict[str, Any]:
    c = capacity()
    out: dict[str, Any] = {"capacity_rps": c, "concurrency": CONCURRENCY, "service_ms": SERVICE_MS}
    with Probes(ours.admin_port, ours.proc.pid) as probes:
        phase(probes, "warm", ours.port, 0.5 * c, 2)
        out["unloaded"] = phase(probes, "unloaded", ours.port, 0.5 * c, 10)
        out["capacity"] = phase(probes, "capacity", ours.port, 1.0 * c, 10)
        probes.churn = True
        out["overload"] = phase(probes, "overload", ours.port, 2.0 * c, seconds)
        probes.churn = False
        time.sleep(0.3)
        body = json.dumps(INITIAL).encode()
        out["weights_reset"] = http_call(ours.admin_port, "PUT", "/api/v1/routes/app/weights", body)
        out["recovery"] = phase(probes, "recovery", ours.port, 0.5 * c, 5)
        before = hang_stats(stats)["hang"]
        probes.phase = "hang"
        hung = openloop.start(ours.port, HANG_RATE, 10, path="/hang")
        healthy = openloop.start(ours.port, 0.5 * c, 10)
        out["hang"] = {
            "hang_route": openloop.collect(hung),
            "healthy_route": openloop.collect(healthy),
            "upstream_before": before,
            "upstream_after": hang_stats(stats)["hang"],
        }
        probes.phase = "end"
        out["capped_upstream"] = hang_stats(stats)["capped"]
        out["proxy_alive"] = ours.proc.poll() is None
    for name in ("unloaded", "capacity", "overload", "recovery", "hang"):
        out.setdefault("admin", {})[name] = probes.admin_summary(name)
        out.setdefault("rss", {})[name] = probes.rss_summary(name)
    out["churn"] = probes.churn_summary("overload")
    return out


def cpu_bound(d: Path) -> dict[str, Any]:
    """The proxy itself saturated: nginx upstreams, wrk 64 vs 512, open loop at 2x."""
    if not procs.have("nginx") or not procs.have("wrk"):
        return {"skipped": "needs nginx and wrk"}
    up_proc, up = proxies.start_upstreams(d)
    try:
        small = scenarios.by_name(("small",))[0]
        ours = proxies.start_ours(d, up, small)
        try:
            out = _cpu_cases(d, ours, up)
        finally:
            procs.stop(ours.proc)
        # the same saturation with the admin API in a supervisor process of its own
        ours = proxies.start_ours(d, up, small, ("--workers", "1"))
        try:
            out.update(_workers_case(d, ours))
        finally:
            procs.stop(ours.proc)
        return out
    finally:
        procs.stop(up_proc)


def _workers_case(d: Path, ours: proxies.Running) -> dict[str, Any]:
    """wrk at 512 connections against `serve --workers 1`: the admin API answers from the
    supervisor while the one worker is saturated (both on CPU 0)."""
    script = d / "done.lua"
    url = f"http://127.0.0.1:{ours.port}/"
    with Probes(ours.admin_port, ours.proc.pid, route="default") as probes:
        wrk.run(url, 64, 2, script)  # warm-up
        probes.phase = "wrk512w"
        window = CpuWindow(ours.proc.pid)
        r = wrk.run(url, 512, 8, script).to_dict()
        r["cpu"] = window.result()
        probes.phase = "end"
    return {"wrk512w": r, "admin_w": probes.admin_summary("wrk512w")}


def _cpu_cases(d: Path, ours: proxies.Running, up: tuple[int, int]) -> dict[str, Any]:
    script = d / "done.lua"
    script.write_text(scenarios.wrk_script(scenarios.by_name(("small",))[0]))
    url = f"http://127.0.0.1:{ours.port}/"
    out: dict[str, Any] = {}
    with Probes(ours.admin_port, ours.proc.pid, route="default") as probes:
        wrk.run(url, 64, 2, script)  # warm-up
        for conns in (64, 512, 64, 512):  # interleaved: noise from elsewhere hits both
            probes.phase = f"wrk{conns}"
            window = CpuWindow(ours.proc.pid)
            r = wrk.run(url, conns, 8, script).to_dict()
            r["cpu"] = window.result()
            out.setdefault(f"wrk{conns}_runs", []).append(r)
        for conns in (64, 512):
            runs = out[f"wrk{conns}_runs"]
            out[f"wrk{conns}"] = max(runs, key=lambda r: r["rps"])
        # what the proxy serves on one core: the best closed-loop rate seen
        out["served_rps"] = max(r["rps"] for r in out["wrk64_runs"] + out["wrk512_runs"])
        rate = round(2 * out["served_rps"])
        out["open2x"] = phase(probes, "open2x", ours.port, rate, 5, max_conns=1000)
        # can this generator offer that at all? (straight to the upstream, no proxy)
        out["direct2x"] = phase(probes, "direct2x", up[0], rate, 5, max_conns=1000)
        probes.phase = "end"
        out["proxy_alive"] = ours.proc.poll() is None
    for name in ("wrk64", "wrk512", "open2x", "direct2x"):
        out.setdefault("admin", {})[name] = probes.admin_summary(name)
        out.setdefault("rss", {})[name] = probes.rss_summary(name)
    return out
