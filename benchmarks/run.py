"""`python -m benchmarks [--quick] [--out DIR]`: our proxy against nginx and HAProxy, one run.

For each scenario every proxy is started with the scenario's config, pinned to CPU 0, and
measured at 1, 64 and 256 connections, runs interleaved between the proxies: rps,
p50/p99/p99.9, proxy CPU seconds per 10,000 requests (utime+stime of its process tree), peak
RSS (VmHWM). wrk straight to the upstream at 1 connection is the baseline for added latency.
WebSocket scenarios drive `ws_load` against the `ws_upstream` echo pair instead of wrk against
nginx; their "direct" runs at every connection count, to show what the tools alone reach.
Medians over the runs; ratios against nginx from the same run. Installs nothing; a missing
program is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import procs, proxies, report, scenarios, wrk, ws_load
from benchmarks.scenarios import Scenario

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    scenarios: tuple[str, ...]
    connections: tuple[int, ...]
    seconds: float
    runs: int
    proxies: tuple[str, ...]
    warmup: float


def make_plan(args: argparse.Namespace) -> Plan:
    names = tuple(s.name for s in scenarios.SCENARIOS)
    if args.quick:
        plan = Plan(scenarios.QUICK, (1, 64), 1.0, 1, ("nginx", "haproxy", "ours"), 0.0)
    else:
        plan = Plan(names, (1, 64, 256), 3.0, 3, ("nginx", "haproxy", "ours"), 1.0)
    return Plan(
        tuple(args.scenarios.split(",")) if args.scenarios else plan.scenarios,
        tuple(int(c) for c in args.connections.split(","))
        if args.connections
        else plan.connections,
        args.duration or plan.seconds,
        args.runs or plan.runs,
        tuple(args.proxies.split(",")) if args.proxies else plan.proxies,
        plan.warmup,
    )


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def load(url: str, conns: int, secs: float, script: Path, s: Scenario) -> dict[str, Any]:
    """One run of the scenario's load tool (wrk, or ws_load for WebSocket) as a result row
    whose `requests` counts requests or messages alike."""
    if s.websocket:
        port = int(url.rsplit(":", 1)[1])
        row = ws_load.run(port, conns, secs, s.ws_size, scenarios.WS_INFLIGHT).to_dict()
        row["requests"] = row["messages"]
        return row
    return wrk.run(url + s.path, conns, secs, script, s.headers).to_dict()


def measure(
    url: str, pid: int | None, conns: int, secs: float, script: Path, s: Scenario
) -> dict[str, Any]:
    """One load run; CPU of the proxy tree (`pid`) over exactly that run."""
    cpu0 = procs.cpu_seconds(pid) if pid else 0.0
    row = load(url, conns, secs, script, s)
    cpu = procs.cpu_seconds(pid) - cpu0 if pid else 0.0
    done = row["requests"]
    row["cpu_s_per_10k"] = cpu / done * 10_000 if done else 0.0
    return row


def summarize(conns: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of one cell; error counts summed."""
    keys: tuple[str, ...] = ("rps", "p50_ms", "p99_ms", "p999_ms", "max_ms", "cpu_s_per_10k")
    keys += ("bytes_per_s",) if "bytes_per_s" in runs[0] else ()
    out: dict[str, Any] = {k: _median(runs, k) for k in keys}
    out["conns"] = conns
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = sum(sum(r["errors"].values()) for r in runs)
    out["runs"] = runs
    return out


class Target:
    """One thing wrk is pointed at: a running proxy, or the upstream itself ("direct")."""

    def __init__(self, name: str, url: str, proc: procs.Proc | None) -> None:
        self.name, self.url, self.proc = name, url, proc
        self.runs: dict[int, list[dict[str, Any]]] = {}

    def measure(self, conns: int, plan: Plan, script: Path, s: Scenario) -> None:
        pid = self.proc.pid if self.proc else None
        row = measure(self.url, pid, conns, plan.seconds, script, s)
        self.runs.setdefault(conns, []).append(row)

    def row(self, scenario: str) -> dict[str, Any]:
        cells = [summarize(c, runs) for c, runs in self.runs.items()]
        rss = procs.peak_rss_mb(self.proc.pid) if self.proc else 0.0
        return {"proxy": self.name, "scenario": scenario, "cells": cells, "peak_rss_mb": rss}


def start_targets(
    s: Scenario, d: Path, up: tuple[int, int], plan: Plan, notes: list[str]
) -> list[Target]:
    """Every available proxy for this scenario, started side by side (idle ones cost nothing)."""
    out = [Target("direct", f"http://127.0.0.1:{up[0]}", None)]
    for name, (start, note) in proxies.available().items():
        if name not in plan.proxies or (s.ours_only and name != "ours"):
            continue
        if start is None:
            _note(notes, f"{name}: skipped, {note}")
            continue
        pd = d / f"{name}-{s.name}"
        pd.mkdir()
        try:
            running = start(pd, up, s)
        except (RuntimeError, OSError) as e:
            _note(notes, f"{name}/{s.name}: did not start: {e}")
            continue
        out.append(Target(name, f"{s.scheme}://127.0.0.1:{running.port}", running.proc))
    return out


def bench_scenario(
    s: Scenario, d: Path, up: tuple[int, int], plan: Plan, notes: list[str]
) -> list[dict[str, Any]]:
    """One scenario against its upstream pair: the nginx one, or for WebSocket an echo pair
    started for the scenario alone (so it costs nothing while the others run)."""
    if not s.websocket:
        return bench_targets(s, d, up, plan, notes)
    ws_proc, ws_up = proxies.start_ws_upstreams(d)
    try:
        return bench_targets(s, d, ws_up, plan, notes)
    finally:
        procs.stop(ws_proc)


def bench_targets(
    s: Scenario, d: Path, up: tuple[int, int], plan: Plan, notes: list[str]
) -> list[dict[str, Any]]:
    """All proxies of one scenario, runs interleaved (proxy order rotating each run), so a
    burst of noise from elsewhere on the machine spreads over every proxy, not one."""
    script = d / f"{s.name}.lua"
    script.write_text(scenarios.wrk_script(s))
    targets = start_targets(s, d, up, plan, notes)
    try:
        for t in targets[1:] if plan.warmup else ():
            load(t.url, 64, plan.warmup, script, s)  # fill upstream pools, warm caches
        live = list(targets)
        for conns in plan.connections:
            for i in range(plan.runs):
                for t in live[i % len(live) :] + live[: i % len(live)]:
                    if t.name == "direct" and conns != 1 and not s.websocket:
                        continue
                    try:
                        t.measure(conns, plan, script, s)
                    except (RuntimeError, ValueError, OSError) as e:
                        _note(notes, f"{t.name}/{s.name}: failed at {conns} connections: {e}")
                        live.remove(t)
        print(f"  {s.name}: done", file=sys.stderr, flush=True)
        return [t.row(s.name) for t in targets if t.runs]
    finally:
        for t in targets:
            if t.proc is not None:
                procs.stop(t.proc)


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)
        print("note:", text, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "cores": procs.os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": report.versions(),
    }


def run(plan: Plan, out: Path) -> dict[str, Any]:
    procs.install_cleanup()
    procs.raise_nofile()
    notes: list[str] = []
    if not procs.have("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk); nothing measured")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="canaryproxy-bench-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        try:
            rows = [
                r
                for s in scenarios.by_name(plan.scenarios)
                for r in bench_scenario(s, d, up, plan, notes)
            ]
        finally:
            procs.stop(up_proc)
    result = {
        "plan": plan.__dict__,
        "machine": machine(),
        "notes": notes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "rows": rows,
    }
    result["ratios"] = report.ratios(rows)
    result["websocket"] = report.ws_ratios(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seconds, not minutes (CI smoke run)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    p.add_argument("--scenarios", help="comma-separated scenario names")
    p.add_argument("--proxies", help="comma-separated: nginx,haproxy,ours")
    p.add_argument("--connections", help="comma-separated connection counts")
    p.add_argument("--duration", type=float, help="seconds per cell")
    p.add_argument("--runs", type=int, help="runs per cell (median taken)")
    args = p.parse_args(argv)
    plan = make_plan(args)
    scenarios.by_name(plan.scenarios)  # unknown names fail before anything starts
    result = run(plan, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    md = report.markdown(result)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0
