"""`python -m benchmarks.reload_stall [--routes 1000] [--changes 10] [--workers 1 2]`

Does a reload or a weight change stall traffic? Our proxy serves a config of N routes
(header exact, header regex + path prefix), wrk keeps one connection busy (each request
waits for the previous one, so any stall of the event loop shows as one slow request) while
the benchmark POSTs `--changes` reloads of changed files (odd ones change one route, even ones
change every route: a full recompile) and `--changes` weight changes, half a second apart.
Reported per worker count: wrk's max and p99.9 latency against a run without changes, and
how long the API calls took. Target (issue 6): never block the loop for more than 10 ms.
Compare two versions with BENCH_OURS_SRC=<exported tree> (see benchmarks.proxies.ours_src).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import configs, procs, proxies, scenarios, wrk
from benchmarks.run import DEFAULT_OUT

SMALL = scenarios.by_name(("small",))[0]
MISS = ("x-tenant: tenant-999999",)  # matches no tenant route: every rule is evaluated


def stall_route(i: int, gen: int) -> dict[str, Any]:
    """Route i of generation `gen`: a header exact match, every third a regex + path prefix."""
    value = f"tenant-{i}" if gen == 0 else f"tenant-{i}-g{gen}"
    route = configs.tenant_route(i, value)
    if i % 3 == 1:
        rx = {"regex": f"^{value}(-[a-z]+)?$"}
        route["match"] = [{"headers": {"x-tenant": rx}, "path": {"prefix": f"/t{i}/"}}]
    return route


def stall_config(port: int, admin: int, up: tuple[int, int], n: int, gen: int) -> dict[str, Any]:
    """N routes ahead of the 95/5 default. Even `gen` > 0 changes every route, odd one route."""
    data = configs.ours_dict(port, admin, up, SMALL, None)
    every = gen > 0 and gen % 2 == 0
    routes = [stall_route(i, gen if every else 0) for i in range(n)]
    if gen % 2 == 1:
        routes[n // 2] = stall_route(n // 2, gen)
    data["routes"] = [*routes, *data["routes"]]
    return data


def call(admin: int, method: str, path: str, body: dict) -> tuple[int, float]:
    """One admin API call: (status, seconds it took)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {proxies.TOKEN}", "Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.monotonic() - t0


def changes(admin: int, rewrite: Any, n: int) -> dict[str, list[tuple[int, float]]]:
    """`n` reloads and `n` weight changes, alternating, half a second apart."""
    out: dict[str, list[tuple[int, float]]] = {"reload": [], "weights": []}
    for gen in range(1, n + 1):
        rewrite(gen)
        out["reload"].append(call(admin, "POST", "/api/v1/reload", {}))
        time.sleep(0.5)
        v2 = float(gen % 2 * 10 + 5)
        body = {"v1": 100.0 - v2, "v2": v2}
        out["weights"].append(call(admin, "PUT", "/api/v1/routes/default/weights", body))
        time.sleep(0.5)
    return out


def start(d: Path, conf: Path, port: int, admin: int, workers: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(conf), "--state-dir", str(d / "st")]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cpu = proxies.PROXY_CPU if workers == 1 else None  # N workers: let them spread
    proc = procs.start(cmd, cpu, d / "ours.out", env=proxies.ours_env(), cwd=proxies.ours_src())
    procs.wait_port(port, proc, timeout=60)
    procs.wait_port(admin, proc, timeout=60)
    return proc


def measure(d: Path, up: tuple[int, int], n_routes: int, n: int, workers: int) -> dict[str, Any]:
    port, admin = procs.free_port(), procs.free_port()
    conf = d / f"ours-{workers}.yaml"
    configs.write_yaml(conf, stall_config(port, admin, up, n_routes, 0))
    proc = start(d, conf, port, admin, workers)
    try:
        script = d / "done.lua"
        script.write_text(scenarios.wrk_script(SMALL))
        url = f"http://127.0.0.1:{port}/"
        seconds = n + 3
        time.sleep(1.0)  # workers: let every one apply the first state
        base = wrk.run(url, 1, seconds, script, MISS)
        cmd = procs.pinned(wrk.command(url, 1, seconds, script, MISS), proxies.LOAD_CPU)
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)
            calls = changes(
                admin,
                lambda g: configs.write_yaml(conf, stall_config(port, admin, up, n_routes, g)),
                n,
            )
            out, _ = load.communicate(timeout=seconds + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        loaded = wrk.parse(out)
    finally:
        procs.stop(proc)
    return summary(workers, base, loaded, calls)


def summary(workers: int, base: Any, loaded: Any, calls: dict) -> dict[str, Any]:
    def ms(kind: str) -> float:
        return round(max((t for _, t in calls[kind]), default=0.0) * 1000, 1)

    return {
        "workers": workers,
        "statuses": sorted({s for kind in calls.values() for s, _ in kind}),
        "reload_call_ms_max": ms("reload"),
        "weights_call_ms_max": ms("weights"),
        "baseline": {"max_ms": base.max_ms, "p999_ms": base.p999_ms, "p50_ms": base.p50_ms},
        "with_changes": {
            "max_ms": loaded.max_ms,
            "p999_ms": loaded.p999_ms,
            "p50_ms": loaded.p50_ms,
            "non_2xx": loaded.non_2xx,
        },
        "added_max_ms": round(loaded.max_ms - base.max_ms, 2),
    }


def run(n_routes: int, n: int, workers: list[int]) -> dict[str, Any]:
    procs.install_cleanup()
    with tempfile.TemporaryDirectory(prefix="canaryproxy-stall-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        try:
            runs = [measure(d, up, n_routes, n, w) for w in workers]
        finally:
            procs.stop(up_proc)
    return {"routes": n_routes, "changes": n, "src": str(proxies.ours_src()), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reload_stall", description=__doc__)
    p.add_argument("--routes", type=int, default=1000)
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    result = run(args.routes, args.changes, args.workers)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reload_stall.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
