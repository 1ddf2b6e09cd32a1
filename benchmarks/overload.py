"""`python -m benchmarks.overload [--seconds 30] [--out DIR]`: our proxy at twice its capacity.

Three cases, one run (proxy alone on CPU 0; upstreams, load and probes on CPU 1):

1. upstream-bound: an upstream of known capacity (`hang_upstream`, N workers x S ms, so
   C = N / S) behind a route whose subsets admit N requests in flight in all
   (`max_requests`). Open-loop load (`openloop`) at 0.5xC (baseline), 1.0xC (reference
   goodput), 2xC for `--seconds` (admin probes, weight churn on the loaded route, RSS), then
   0.5xC again (recovery).
2. hanging upstream: a route to an upstream that reads and never answers (`max_requests` 8,
   `timeout` 2 s) gets 50 req/s while the healthy route keeps 0.5xC.
3. proxy-CPU-bound: the nginx upstream pair; wrk at 64 and 512 connections (closed loop) and
   an open-loop attempt at twice the best wrk rate, with admin probes; the same open loop
   straight at nginx tells whether this generator can offer that rate at all.

Writes overload.json and overload.md to `--out` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.overload_cases import (
    CONCURRENCY,
    HANG_LIMIT,
    HANG_TIMEOUT,
    ROUTE_TIMEOUT,
    SERVICE_MS,
    cpu_bound,
    upstream_bound,
)
from benchmarks.proxies import LOAD_CPU
from benchmarks.run import DEFAULT_OUT

# --------------------------------------------------------------------- report


def verdicts(u: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(target, figure, threshold, met) for the upstream-bound and hanging cases."""
    base, cap, over = u["unloaded"], u["capacity"], u["overload"]
    adm, rss = u["admin"]["overload"], u["rss"]["overload"]
    ratio = over["ok_p99_ms"] / base["ok_p99_ms"] if base["ok_p99_ms"] else float("inf")
    answered = over["ok"] + over["s503"] + sum(over["other_status"].values())
    share = over["s503"] / answered if answered else 0.0
    good = over["goodput_rps"] / cap["goodput_rps"] if cap["goodput_rps"] else 0.0
    growth = rss["max_last_third_mb"] - rss["max_first_third_mb"]
    churn = u["churn"]
    h, hu = u["hang"]["hang_route"], u["hang"]["upstream_after"]
    accepted = hu["conns_total"] - u["hang"]["upstream_before"]["conns_total"]
    after = u["rss"]["recovery"], u["rss"]["hang"]
    flat_after = max(r.get("max_mb", 0) for r in after) - rss["last_mb"]
    healthy = u["hang"]["healthy_route"]
    rows = [
        (
            "admitted p99 / unloaded p99",
            f"{over['ok_p99_ms']:.1f} / {base['ok_p99_ms']:.1f} ms = {ratio:.2f}",
            "≤ 10",
            ratio <= 10,
        ),
        (
            "refused: 503 share, p50 / p99 / max",
            f"{share:.1%}, {over['s503_p50_ms']:.2f} / {over['s503_p99_ms']:.2f} / "
            f"{over['s503_max_ms']:.1f} ms",
            "fast: p99 ≤ 10 ms",
            over["s503"] > 0 and over["s503_p99_ms"] <= 10,
        ),
        (
            "503s with Retry-After",
            f"{over['s503_retry_after']} of {over['s503']}",
            "all",
            over["s503_retry_after"] == over["s503"],
        ),
        (
            "timeouts / other statuses / errors at 2×C",
            f"{over['timeouts']} / {sum(over['other_status'].values())} / "
            f"{sum(over['errors'].values())}",
            "0 / 0 / 0",
            not over["timeouts"] and not over["other_status"] and not over["errors"],
        ),
        (
            "admin p99 / max during 2×C",
            f"{adm['p99_ms']:.1f} / {adm['max_ms']:.1f} ms ({adm['probes']} probes, "
            f"{adm['non_200']} not 200)",
            "max ≤ 100 ms",
            adm["max_ms"] <= 100 and not adm["non_200"],
        ),
        (
            "weight changes during 2×C",
            f"{churn['changes']}, statuses {churn['statuses']}, max {churn['max_ms']:.1f} ms",
            "all 200",
            churn["changes"] > 0 and set(churn["statuses"]) == {"200"},
        ),
        (
            "RSS first / max / last (max 1st third → last third)",
            f"{rss['first_mb']:.1f} / {rss['max_mb']:.1f} / {rss['last_mb']:.1f} MiB "
            f"({rss['max_first_third_mb']:.2f} → {rss['max_last_third_mb']:.2f}; "
            f"{(rss['last_mb'] - rss['first_mb']) * 1024:+.0f} KiB over {churn['changes']} "
            f"weight changes, {flat_after * 1024:+.0f} KiB in the 15 s after)",
            "growth < 5 MiB",
            growth < 5,
        ),
        (
            "goodput 2×C / goodput 1×C",
            f"{over['goodput_rps']:.0f} / {cap['goodput_rps']:.0f} rps = {good:.3f}",
            "≥ 0.9",
            good >= 0.9,
        ),
        (
            "goodput 2×C / nominal C",
            f"{over['goodput_rps']:.0f} / {u['capacity_rps']:.0f} rps = "
            f"{over['goodput_rps'] / u['capacity_rps']:.3f}",
            "≥ 0.9",
            over["goodput_rps"] >= 0.9 * u["capacity_rps"],
        ),
        (
            "hanging upstream: most connections open / requests outstanding at once",
            f"{hu['conns_open_max']} / {hu['outstanding_max']} ({accepted} connections and "
            f"{hu['requests']} requests in all: {HANG_LIMIT} per {HANG_TIMEOUT:g} s timeout)",
            f"≤ {HANG_LIMIT}",
            hu["conns_open_max"] <= HANG_LIMIT and hu["outstanding_max"] <= HANG_LIMIT,
        ),
        (
            "hanging route: 503 p99 / max; 504s at the timeout",
            f"{h['s503_p99_ms']:.2f} / {h['s503_max_ms']:.1f} ms ({h['s503']} × 503, "
            f"{h['s503_retry_after']} with Retry-After); {h['other_status']} at "
            f"~{h['other_p50_ms'] / 1000:.2f} s; {h['timeouts']} timeouts",
            "fast 503s, 504 at 2 s, 0 timeouts",
            h["s503_p99_ms"] <= 10 and not h["timeouts"] and not h["errors"],
        ),
        (
            "healthy route p99 during the hang / unloaded",
            f"{healthy['ok_p99_ms']:.1f} / {base['ok_p99_ms']:.1f} ms "
            f"({healthy['ok']} of {healthy['sent']} 2xx)",
            "≤ 10× and all 2xx",
            healthy["ok_p99_ms"] <= 10 * base["ok_p99_ms"] and healthy["ok"] == healthy["sent"],
        ),
    ]
    return rows


def phase_table(u: dict[str, Any]) -> list[str]:
    lines = [
        "| phase | offered rps | written rps | 2xx/s | 503/s | other | timeouts "
        "| 2xx p50 / p99 / max ms | 503 p99 ms | admin p99 / max ms "
        "| proxy CPU % / CPU0 busy % / CPU1 busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("unloaded", "capacity", "overload", "recovery"):
        r, a = u[name], u["admin"][name]
        lines.append(
            f"| {name} | {r['offered_rps']:.0f} | {r['written_rps']:.0f} | "
            f"{r['goodput_rps']:.0f} | {r['s503_rps']:.0f} | "
            f"{sum(r['other_status'].values()) + sum(r['errors'].values())} | {r['timeouts']} | "
            f"{r['ok_p50_ms']:.1f} / {r['ok_p99_ms']:.1f} / {r['ok_max_ms']:.1f} | "
            f"{r['s503_p99_ms']:.2f} | {a['p99_ms']:.1f} / {a['max_ms']:.1f} | "
            f"{cpu_cell(r['cpu'])} |"
        )
    return lines


def cpu_cell(c: dict[str, float]) -> str:
    return f"{c['proxy_cpu_pct']:.0f} / {c.get('cpu0_busy_pct', 0):.0f} / {c.get('cpu1_busy_pct', 0):.0f}"


def mark(met: bool | None) -> str:
    return "–" if met is None else "yes" if met else "**no**"


def cpu_table(c: dict[str, Any]) -> list[str]:
    if "skipped" in c:
        return [f"Proxy-CPU-bound case skipped: {c['skipped']}."]
    lines = [
        "| load | rps (2xx) | p50 / p99 / max ms | errors / non-2xx | admin p99 / max ms "
        "| RSS max MiB | proxy CPU % / CPU0 / CPU1 busy % |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in ("wrk64", "wrk512"):
        r, a = c[k], c["admin"][k]
        lines.append(
            f"| wrk {k[3:]} connections (closed loop) | {r['rps']:.0f} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} | "
            f"{sum(r['errors'].values())} / {r['non_2xx']} | {a['p99_ms']:.1f} / "
            f"{a['max_ms']:.1f} | {c['rss'][k].get('max_mb', 0):.1f} | {cpu_cell(r['cpu'])} |"
        )
    if "wrk512w" in c:
        r, a = c["wrk512w"], c["admin_w"]
        lines.append(
            f"| wrk 512 connections, `--workers 1` (admin in the supervisor) | {r['rps']:.0f} | "
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} | "
            f"{sum(r['errors'].values())} / {r['non_2xx']} | {a['p99_ms']:.1f} / "
            f"{a['max_ms']:.1f} | – | {cpu_cell(r['cpu'])} |"
        )
    for k, what in (("open2x", "open loop via the proxy"), ("direct2x", "open loop, no proxy")):
        o, a = c[k], c["admin"][k]
        lines.append(
            f"| {what}: {o['offered_rps']:.0f} rps offered, {o['written_rps']:.0f} written "
            f"| {o['goodput_rps']:.0f} | {o['ok_p50_ms']:.1f} / {o['ok_p99_ms']:.1f} / "
            f"{o['ok_max_ms']:.1f} | {o['timeouts']} timeouts, {sum(o['errors'].values())} "
            f"errors / {o['s503'] + sum(o['other_status'].values())} | {a['p99_ms']:.1f} / "
            f"{a['max_ms']:.1f} | {c['rss'][k].get('max_mb', 0):.1f} | {cpu_cell(o['cpu'])} |"
        )
    lines += ["", "| target | figure | threshold | met |", "|---|---|---|---|"]
    for target, fig, thr, met in cpu_verdicts(c):
        lines.append(f"| {target} | {fig} | {thr} | {mark(met)} |")
    return lines


def cpu_verdicts(c: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Targets as far as the proxy-CPU-bound case measures them."""
    r64, r512 = c["wrk64"], c["wrk512"]
    ratio = r512["rps"] / r64["rps"] if r64["rps"] else 0.0
    each = ", ".join(
        f"{a['rps']:.0f}/{b['rps']:.0f}"
        for a, b in zip(c["wrk64_runs"], c["wrk512_runs"], strict=True)
    )
    a512, aopen = c["admin"]["wrk512"], c["admin"]["open2x"]
    o, direct = c["open2x"], c["direct2x"]
    rows = [
        (
            "closed-loop goodput 512 / 64 connections (best of 2 each)",
            f"{r512['rps']:.0f} / {r64['rps']:.0f} = {ratio:.3f} (runs 64/512: {each})",
            "≥ 0.9",
            ratio >= 0.9,
        ),
        (
            "p99 at 512 / p99 at 64 connections",
            f"{r512['p99_ms']:.1f} / {r64['p99_ms']:.1f} ms",
            "none (closed loop: 8× the connections queue 8× deeper)",
            None,
        ),
        (
            "admin max during 512 connections / during open loop 2×",
            f"{a512['max_ms']:.1f} / {aopen['max_ms']:.1f} ms",
            "≤ 100 ms",
            a512["max_ms"] <= 100 and aopen["max_ms"] <= 100,
        ),
        (
            "admin max at 512 connections with `--workers 1`",
            f"{c['admin_w']['max_ms']:.1f} ms" if "admin_w" in c else "not run",
            "≤ 100 ms",
            c["admin_w"]["max_ms"] <= 100 if "admin_w" in c else None,
        ),
        (
            f"open loop at 2× the best wrk rate ({c['served_rps']:.0f}): can this generator "
            "offer it?",
            f"written {direct['written_rps']:.0f} of {direct['offered_rps']:.0f} rps with no "
            f"proxy at all; via the proxy {o['written_rps']:.0f} written, "
            f"{o['goodput_rps']:.0f} 2xx/s, {o['timeouts']} timeouts, 0 × 503 expected "
            "(no CPU-based shedding)",
            "generator ≥ 2×",
            direct["written_rps"] >= 0.95 * direct["offered_rps"],
        ),
    ]
    return rows


def markdown(res: dict[str, Any]) -> str:
    u = res["upstream_bound"]
    head = [
        f"Run of {res['when']} (`python -m benchmarks.overload --seconds {res['seconds']:g}`, "
        f"{res['took_s']:.0f} s), {res['machine']}.",
        "",
        f"Upstream-bound: capacity C = {CONCURRENCY} workers / {SERVICE_MS:g} ms = "
        f"{u['capacity_rps']:.0f} rps; `max_requests` {CONCURRENCY} in all on the route "
        f"(`capped` {CONCURRENCY - 1} + `spare` 1, same upstream), route timeout "
        f"{ROUTE_TIMEOUT:g} s; 2×C held {res['seconds']:g} s with admin probes every 100 ms "
        "and a weight change of the loaded route every 250 ms (`capped`/`spare` 95/5 and "
        "90/10 in turn; 100/0 in the other phases).",
        "",
        *phase_table(u),
        "",
        "| target | figure | threshold | met |",
        "|---|---|---|---|",
    ]
    for target, fig, thr, met in verdicts(u):
        head.append(f"| {target} | {fig} | {thr} | {mark(met)} |")
    head += ["", "Proxy-CPU-bound (nginx upstream pair, default config):", ""]
    head += cpu_table(res["cpu_bound"])
    return "\n".join(head) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {sys.version.split()[0]}"


def run(seconds: float) -> dict[str, Any]:
    procs.install_cleanup()
    procs.raise_nofile()
    if (os.cpu_count() or 1) > LOAD_CPU:
        os.sched_setaffinity(0, {LOAD_CPU})  # probes and wrk/openloop parents off CPU 0
    t0 = time.monotonic()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="canaryproxy-overload-") as tmp:
        d = Path(tmp)
        (d / "a").mkdir()
        (d / "b").mkdir()
        u = upstream_bound(d / "a", seconds)
        c = cpu_bound(d / "b")
    res = {
        "when": when,
        "seconds": seconds,
        "machine": machine(),
        "took_s": time.monotonic() - t0,
        "upstream_bound": u,
        "cpu_bound": c,
    }
    res["verdicts"] = [
        {"target": t, "figure": f, "threshold": th, "met": m} for t, f, th, m in verdicts(u)
    ]
    if "skipped" not in c:
        res["cpu_verdicts"] = [
            {"target": t, "figure": f, "threshold": th, "met": m} for t, f, th, m in cpu_verdicts(c)
        ]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    p.add_argument("--seconds", type=float, default=30.0, help="how long 2xC is held")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    res = run(a.seconds)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "overload.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (a.out / "overload.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
