"""Ratios against nginx from the same run, and the markdown table (ratios first)."""

from __future__ import annotations

import subprocess
from typing import Any

from benchmarks import procs

Row = dict[str, Any]
# Scenarios only our proxy runs are compared with nginx's plain GET.
FALLBACK = "small"


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, flag in (("nginx", "-v"), ("haproxy", "-v"), ("wrk", "-v")):
        path = procs.have(name)
        if not path:
            continue
        r = subprocess.run([path, flag], capture_output=True, text=True, timeout=10)
        text = (r.stdout + r.stderr).strip().splitlines()
        out[name] = text[0] if text else "?"
    return out


def _cell(row: Row | None, conns: int) -> Row | None:
    if row is None:
        return None
    for c in row["cells"]:
        if c["conns"] == conns:
            return dict(c)
    return None


def _find(rows: list[Row], proxy: str, scenario: str) -> Row | None:
    for r in rows:
        if r["proxy"] == proxy and r["scenario"] == scenario:
            return r
    return None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def _added(row: Row | None, direct: Row | None, key: str) -> float | None:
    c, d = _cell(row, 1), _cell(direct, 1)
    if c is None or d is None:
        return None
    return round(c[key] - d[key], 3)


def _get(row: Row | None, conns: int, key: str) -> float | None:
    c = _cell(row, conns)
    return None if c is None else float(c[key])


def ratio_row(rows: list[Row], proxy: str, scenario: str) -> Row:
    """One proxy in one scenario against nginx (same scenario, else `small`) and direct."""
    row = _find(rows, proxy, scenario)
    ref = _find(rows, "nginx", scenario) or _find(rows, "nginx", FALLBACK)
    direct = _find(rows, "direct", scenario)
    ref_direct = direct if _find(rows, "nginx", scenario) else _find(rows, "direct", FALLBACK)
    add50, ref50 = _added(row, direct, "p50_ms"), _added(ref, ref_direct, "p50_ms")
    return {
        "scenario": scenario,
        "proxy": proxy,
        "rps_64_x": _div(_get(row, 64, "rps"), _get(ref, 64, "rps")),
        "rps_256_x": _div(_get(row, 256, "rps"), _get(ref, 256, "rps")),
        "cpu_x": _div(_get(row, 64, "cpu_s_per_10k"), _get(ref, 64, "cpu_s_per_10k")),
        "cpu_s_per_10k": _get(row, 64, "cpu_s_per_10k"),
        "added_p50_ms": add50,
        "added_p50_x": _div(add50, ref50),
        "added_p99_ms": _added(row, direct, "p99_ms"),
        "peak_rss_mb": round(row["peak_rss_mb"], 1) if row else None,
    }


def ratios(rows: list[Row]) -> list[Row]:
    seen: list[tuple[str, str]] = []
    for r in rows:
        if r["proxy"] != "direct" and (r["scenario"], r["proxy"]) not in seen:
            seen.append((r["scenario"], r["proxy"]))
    return [ratio_row(rows, p, s) for s, p in seen]


def ws_ratios(rows: list[Row]) -> list[Row]:
    """WebSocket cells (those with bytes/s) per proxy and connection count, against nginx's
    cell of the same scenario and count; "direct" is the tools alone, no proxy between."""
    out = []
    for r in rows:
        ref = _find(rows, "nginx", r["scenario"])
        for c in r["cells"]:
            if "bytes_per_s" not in c:
                continue
            conns = c["conns"]
            out.append(
                {
                    "scenario": r["scenario"],
                    "proxy": r["proxy"],
                    "conns": conns,
                    "msgs_per_s": c["rps"],
                    "mb_per_s": c["bytes_per_s"] / 1e6,
                    "bytes_x": _div(c["bytes_per_s"], _get(ref, conns, "bytes_per_s")),
                    "cpu_s_per_10k": None if r["proxy"] == "direct" else c["cpu_s_per_10k"],
                    "cpu_x": None
                    if r["proxy"] == "direct"
                    else _div(c["cpu_s_per_10k"], _get(ref, conns, "cpu_s_per_10k")),
                    "p50_ms": c["p50_ms"],
                    "p99_ms": c["p99_ms"],
                }
            )
    return out


def ws_table(result: Row) -> list[str]:
    header = [
        "scenario",
        "proxy",
        "tunnels",
        "messages/s",
        "MB/s echoed",
        "bytes/s ×nginx",
        "CPU s/10k msgs",
        "CPU/msg ×nginx",
        "round trip p50 ms",
        "p99 ms",
    ]
    lines = [
        [
            r["scenario"],
            r["proxy"],
            str(r["conns"]),
            _fmt(r["msgs_per_s"], 0),
            _fmt(r["mb_per_s"], 1),
            _fmt(r["bytes_x"]),
            _fmt(r["cpu_s_per_10k"], 3),
            _fmt(r["cpu_x"]),
            _fmt(r["p50_ms"], 3),
            _fmt(r["p99_ms"], 3),
        ]
        for r in result.get("websocket", [])
    ]
    return _table(header, lines)


def _fmt(v: object, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def ratio_table(result: Row) -> list[str]:
    header = [
        "scenario",
        "proxy",
        "rps@64 ×nginx",
        "rps@256 ×nginx",
        "CPU/req ×nginx",
        "CPU s/10k req @64",
        "added p50 @1c ms",
        "added p50 ×nginx",
        "added p99 @1c ms",
        "peak RSS MB",
    ]
    lines = [
        [
            r["scenario"],
            r["proxy"],
            _fmt(r["rps_64_x"]),
            _fmt(r["rps_256_x"]),
            _fmt(r["cpu_x"]),
            _fmt(r["cpu_s_per_10k"], 3),
            _fmt(r["added_p50_ms"], 3),
            _fmt(r["added_p50_x"]),
            _fmt(r["added_p99_ms"], 3),
            _fmt(r["peak_rss_mb"], 1),
        ]
        for r in result["ratios"]
    ]
    return _table(header, lines)


def detail_table(result: Row) -> list[str]:
    header = [
        "scenario",
        "proxy",
        "conns",
        "rps",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU s/10k req",
        "non-2xx",
        "socket errors",
    ]
    lines = []
    for r in result["rows"]:
        for c in r["cells"]:
            lines.append(
                [
                    r["scenario"],
                    r["proxy"],
                    str(c["conns"]),
                    _fmt(c["rps"], 0),
                    _fmt(c["p50_ms"], 3),
                    _fmt(c["p99_ms"], 3),
                    _fmt(c["p999_ms"], 3),
                    _fmt(c["cpu_s_per_10k"], 3),
                    str(c["non_2xx"]),
                    str(c["socket_errors"]),
                ]
            )
    return _table(header, lines)


def markdown(result: Row) -> str:
    m, plan = result["machine"], result["plan"]
    head = [
        f"# canaryproxy benchmark, {result['started']} ({result['seconds']} s)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}; "
        + "; ".join(m["versions"].values()),
        f"Plan: {plan['seconds']:g} s per cell, {plan['runs']} run(s), medians; "
        "proxy pinned to CPU 0, the load tool (wrk, or ws_load) and the upstream pair on CPU 1; "
        "95/5 split.",
        "",
        "## Ratios against nginx (1 worker), same run",
        "",
    ]
    notes = ["", "Notes:", *[f"- {n}" for n in result["notes"]]] if result["notes"] else []
    if result.get("websocket"):
        notes += [
            "",
            "## WebSocket, same run",
            "",
            "Messages are echoed (the proxy carries each payload both ways; MB/s counts it "
            "once); `direct` is ws_load straight to the echo upstream, the tools' own ceiling. "
            "In the tables above and below, rps and CPU per 10k requests count messages.",
            "",
            *ws_table(result),
        ]
    body = ["", "## Every cell", ""]
    return "\n".join(head + ratio_table(result) + notes + body + detail_table(result)) + "\n"
