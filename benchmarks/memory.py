"""`python -m benchmarks.memory [--out DIR] [--idle N]`: proxy RSS idle, under load, holding N.

For our proxy and nginx (same upstream pair, same 95/5 split): RSS after start-up and a
few requests; the highest RSS sampled while wrk drives 256 connections; RSS while
`idle_clients` holds N (default 10,000) idle keep-alive client connections.
Targets (issue 6): ≤ 60 MB idle, ≤ 100 MB at 256 connections, ≤ 200 MB with 10,000 idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import configs, procs, proxies, scenarios, wrk
from benchmarks.run import DEFAULT_OUT

SMALL = scenarios.by_name(("small",))[0]


def start_ours(d: Path, up: tuple[int, int], max_connections: int) -> proxies.Running:
    port, admin = procs.free_port(), procs.free_port()
    data = configs.ours_dict(port, admin, up, SMALL, None)
    data["limits"] = {"max_connections": max_connections}
    return proxies.start_ours_config(d, configs.write_yaml(d / "ours.yaml", data), port, admin)


def sample_max_rss(pid: int, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        out.append(procs.rss_mb(pid))
        time.sleep(0.05)


def under_load(url: str, pid: int, script: Path, conns: int) -> float:
    """Highest RSS sampled while wrk holds `conns` busy connections."""
    stop, samples = threading.Event(), [procs.rss_mb(pid)]
    t = threading.Thread(target=sample_max_rss, args=(pid, stop, samples))
    t.start()
    try:
        wrk.run(url, conns, 3, script)
    finally:
        stop.set()
        t.join()
    return max(samples)


def holding_idle(port: int, pid: int, n: int, d: Path) -> tuple[float, str]:
    """RSS while `n` idle keep-alive clients are held; also the clients' READY line."""
    cmd = [sys.executable, "-m", "benchmarks.idle_clients", str(port), str(n)]
    clients = subprocess.Popen(
        procs.pinned(cmd, proxies.LOAD_CPU),
        stdout=subprocess.PIPE,
        text=True,
        cwd=proxies.REPO,
        start_new_session=True,
    )
    try:
        line = _read_line(clients, 180)
        time.sleep(1.0)
        return procs.rss_mb(pid), line
    finally:
        clients.terminate()
        clients.wait(10)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""))
    t.daemon = True
    t.start()
    t.join(timeout)
    if not box or not box[0].startswith("READY"):
        raise RuntimeError(f"idle clients did not get ready: {box}")
    return box[0].strip()


def measure(running: proxies.Running, d: Path, n_idle: int) -> dict[str, Any]:
    url, pid = f"http://127.0.0.1:{running.port}/", running.proc.pid
    script = d / "done.lua"
    script.write_text(scenarios.wrk_script(SMALL))
    wrk.run(url, 1, 1, script)
    time.sleep(0.5)
    idle = procs.rss_mb(pid)
    at_256 = under_load(url, pid, script, 256)
    held, ready = holding_idle(running.port, pid, n_idle, d)
    return {
        "idle_mb": round(idle, 1),
        "at_256_mb": round(at_256, 1),
        f"idle_{n_idle}_conns_mb": round(held, 1),
        "clients": ready,
        "peak_mb": round(procs.peak_rss_mb(pid), 1),
    }


def run(n_idle: int) -> dict[str, Any]:
    procs.install_cleanup()
    procs.raise_nofile()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="canaryproxy-mem-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        try:
            for name in ("ours", "nginx"):
                pd = d / name
                pd.mkdir()
                running = (
                    start_ours(pd, up, n_idle + 1000)
                    if name == "ours"
                    else proxies.start_nginx(pd, up, SMALL)
                )
                try:
                    out[name] = measure(running, pd, n_idle)
                finally:
                    procs.stop(running.proc)
        finally:
            procs.stop(up_proc)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--idle", type=int, default=10_000, help="idle keep-alive clients to hold")
    args = p.parse_args(argv)
    result = run(args.idle)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
