"""`python -m benchmarks.mem_soak [--seconds 200] [variant flags]`: where proxy memory goes.

One controlled run: two recording upstreams, the App in `benchmarks.mem_probe` (a
subprocess on the chosen loop), steady open-loop load like `benchmarks/soak.py`
(150 rps, 5 % slow, every other fast request a 1 KiB POST) with no reloads and no
upstream restarts. Change one thing per run:

    --loop asyncio          default asyncio loop instead of uvloop
    --new-conn              a new client connection per request (no keep-alive)
    --no-status             do not poll the admin /api/v1/status every 5 s
    --access-log            access log to a file in the work dir
    --compat                metrics.compat: [istio, http]
    --break-cycles          drop each lost connection's parser (the proposed fix)
    --src DIR               measure the proxy/ of another tree (e.g. a `git archive` of HEAD)
    --env K=V               e.g. MALLOC_ARENA_MAX=1, PYTHONMALLOC=malloc

Prints one JSON summary: slopes (KiB/min after the warm-up) of RSS, [heap], other
anonymous memory, malloc bytes in use and free, Python blocks, gc objects, tasks;
the memory returned by gc.collect() + malloc_trim(0) at the end; the object types
whose gc-tracked count grew the most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault.harness import (  # noqa: E402
    REPO,
    Load,
    UpstreamProcess,
    config_text,
    fetch,
    free_port,
)

from benchmarks.soak import linear_fit  # noqa: E402

SERIES = ("rss", "heap", "anon", "malloc_used", "malloc_free", "py_blocks", "gc_objects", "tasks")


def proxy_config(port: int, admin: int, ups: dict[str, str], args: argparse.Namespace) -> str:
    text = config_text(port, admin, ups, {"v1": 90, "v2": 10})
    if args.access_log:
        text = text.replace("access_log: false", f"access_log: {args.work}/access.log")
    if args.compat:
        text += "metrics: {compat: [istio, http]}\n"
    return text


def start_probe(args: argparse.Namespace, config: Path, out: Path) -> subprocess.Popen[str]:
    probe = Path(__file__).with_name("mem_probe.py")
    cmd = [sys.executable, str(probe), "-c", str(config), "--out", str(out)]
    cmd += ["--loop", args.loop, "--state-dir", str(args.work / "state")]
    cmd += ["--break-cycles"] if args.break_cycles else []
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (args.src, env.get("PYTHONPATH", "")) if p)
    log = (args.work / "proxy.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"probe did not start: {(args.work / 'proxy.log').read_text()[-2000:]}")
    return proc


async def poll_status(admin: int, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await fetch(admin, "GET", "/api/v1/status")
        await asyncio.sleep(5)


async def drive(args: argparse.Namespace, port: int, admin: int) -> dict[str, int]:
    fast = Load(port, args.rate * 0.95, args.seconds, "mem-f", 2, 1024)
    slow = Load(port, args.rate * 0.05, args.seconds, "mem-s", 0)
    slow.path = "/slow?ms=500"
    fast.new_conn_each = slow.new_conn_each = args.new_conn
    jobs = [fast.run_load(), slow.run_load()]
    if not args.no_status:
        jobs.append(poll_status(admin, args.seconds))
    await asyncio.gather(*jobs)
    ledger = fast.ledger + slow.ledger
    return {"sent": len(ledger), "ok": sum(e.status == 200 for e in ledger)}


def slopes(recs: list[dict[str, Any]], warmup: float) -> dict[str, float]:
    body = [r for r in recs if not r["tag"] and r["t"] >= warmup]
    xs = [r["t"] / 60 for r in body]
    return {k: round(linear_fit(xs, [float(r[k]) for r in body])[0], 1) for k in SERIES}


def type_growth(recs: list[dict[str, Any]], warmup: float, top: int = 8) -> dict[str, int]:
    typed = [r for r in recs if "types" in r and r["t"] >= warmup]
    if len(typed) < 2:
        return {}
    first, last = typed[0]["types"], typed[-1]["types"]
    delta = {k: last.get(k, 0) - first.get(k, 0) for k in set(first) | set(last)}
    return dict(sorted(delta.items(), key=lambda kv: -kv[1])[:top])


def summarize(recs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    recs = [r | {"t": r.get("t", 0)} for r in recs]
    plain = [r for r in recs if not r["tag"]]
    body = [r for r in plain if r["t"] >= args.warmup]
    before = next(r for r in recs if r["tag"] == "before_trim")
    after = next(r for r in recs if r["tag"] == "trimmed")
    pick = ("rss", "heap", "anon", "malloc_used", "malloc_free", "py_blocks")
    return {
        "variant": vars(args) | {"work": None},
        "slope_kib_or_count_per_min": slopes(recs, args.warmup),
        "after_warmup": {k: body[0][k] for k in pick} if body else {},
        "end": {k: before[k] for k in pick},
        "after_gc_trim": {k: after[k] for k in pick},
        "gc_full_collections": plain[-1].get("gc_full"),
        "tasks_min_max": [min(r["tasks"] for r in plain), max(r["tasks"] for r in plain)],
        "type_growth": type_growth(recs, args.warmup),
        "garbage": next((r for r in recs if r["tag"] == "garbage"), {}),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    v1 = UpstreamProcess("v1", args.work / "v1.jsonl").start()
    v2 = UpstreamProcess("v2", args.work / "v2.jsonl").start()
    port, admin = free_port(), free_port()
    cfg = args.work / "proxy.yaml"
    cfg.write_text(proxy_config(port, admin, {"v1": v1.address, "v2": v2.address}, args))
    out = args.work / "samples.jsonl"
    proc = start_probe(args, cfg, out)
    try:
        counts = await drive(args, port, admin)
        await asyncio.sleep(3)
        proc.send_signal(signal.SIGUSR2)
        await asyncio.sleep(2)
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        v1.stop()
        v2.stop()
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    return summarize(recs, args) | counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=200)
    p.add_argument("--warmup", type=float, default=50)
    p.add_argument("--rate", type=float, default=150)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--new-conn", action="store_true")
    p.add_argument("--no-status", action="store_true")
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--compat", action="store_true")
    p.add_argument("--break-cycles", action="store_true", help="the proposed fix, patched in")
    p.add_argument("--env", action="append", default=[], help="K=V for the proxy process")
    p.add_argument("--src", default=str(REPO), help="the tree whose proxy/ is measured")
    p.add_argument("--keep", help="write samples and logs here instead of a temp dir")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="memsoak-") as tmp:
        args.work = Path(args.keep or tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run(args))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
