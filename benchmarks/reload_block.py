"""`python -m benchmarks.reload_block [--routes 1000] [--reloads 10]`: does a reload stall traffic?

Our proxy runs a config of N header-match routes. wrk keeps one connection busy (each request
waits for the previous one, so any stall of the event loop shows as one slow request) while
the file is changed and `POST /api/v1/reload` is called every half second. Reported: wrk's
max and p99.9 latency with reloads against a run without them, and the reload call times.
Target (issue 6): a reload of 1,000 routes never blocks the event loop for more than 10 ms.
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
SMALL_HEADERS = ("x-tenant: tenant-999999",)  # matches no route: every rule is evaluated


def route_config(port: int, admin: int, up: tuple[int, int], n: int, gen: int) -> dict[str, Any]:
    """N tenant routes ahead of the 95/5 default; `gen` changes one route so each file differs."""
    data = configs.ours_dict(port, admin, up, SMALL, None)
    routes = [configs.tenant_route(i) for i in range(n)]
    routes[n // 2] = configs.tenant_route(n // 2, f"tenant-{n // 2}-gen{gen}")
    data["routes"] = [*routes, *data["routes"]]
    return data


def reload(admin: int) -> tuple[int, float]:
    """POST /api/v1/reload; (status, seconds the call took)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{admin}/api/v1/reload",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {proxies.TOKEN}", "Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.monotonic() - t0


def load_with_reloads(
    url: str, script: Path, seconds: int, reloads: int, rewrite: Any, admin: int
) -> tuple[wrk.WrkResult, list[tuple[int, float]]]:
    """wrk at 1 connection for `seconds` while `reloads` reloads happen, half a second apart."""
    cmd = procs.pinned(wrk.command(url, 1, seconds, script, SMALL_HEADERS), proxies.LOAD_CPU)
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    calls = []
    try:
        time.sleep(0.5)
        for gen in range(1, reloads + 1):
            rewrite(gen)
            calls.append(reload(admin))
            time.sleep(0.5)
        out, err = load.communicate(timeout=seconds + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    return wrk.parse(out), calls


def run(n_routes: int, reloads: int) -> dict[str, Any]:
    procs.install_cleanup()
    with tempfile.TemporaryDirectory(prefix="canaryproxy-reload-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        port, admin = procs.free_port(), procs.free_port()
        conf = d / "ours.yaml"

        def rewrite(gen: int) -> None:
            configs.write_yaml(conf, route_config(port, admin, up, n_routes, gen))

        rewrite(0)
        ours = proxies.start_ours_config(d, conf, port, admin)
        try:
            script = d / "done.lua"
            script.write_text(scenarios.wrk_script(SMALL))
            url = f"http://127.0.0.1:{port}/"
            seconds = int(reloads * 0.6) + 2
            base = wrk.run(url, 1, seconds, script, SMALL_HEADERS)
            loaded, calls = load_with_reloads(url, script, seconds, reloads, rewrite, admin)
            rss = procs.rss_mb(ours.proc.pid)
        finally:
            procs.stop(ours.proc)
            procs.stop(up_proc)
    return {
        "routes": n_routes,
        "reloads": len(calls),
        "reload_status": sorted({s for s, _ in calls}),
        "reload_call_ms_max": round(max(t for _, t in calls) * 1000, 1) if calls else None,
        "baseline": {"max_ms": base.max_ms, "p999_ms": base.p999_ms, "p50_ms": base.p50_ms},
        "with_reloads": {
            "max_ms": loaded.max_ms,
            "p999_ms": loaded.p999_ms,
            "p50_ms": loaded.p50_ms,
            "non_2xx": loaded.non_2xx,
        },
        "added_max_ms": round(loaded.max_ms - base.max_ms, 2),
        "rss_mb_after": round(rss, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reload_block", description=__doc__)
    p.add_argument("--routes", type=int, default=1000)
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    result = run(args.routes, args.reloads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reload_block.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
