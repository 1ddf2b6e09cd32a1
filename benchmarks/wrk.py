"""Run wrk once and read its answer: requests, rps, latency percentiles, errors."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import procs

_BENCH = re.compile(r"^BENCH (.*)$", re.M)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_RPS = re.compile(r"Requests/sec:\s*([\d.]+)")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    non_2xx: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse(output: str) -> WrkResult:
    """Parse wrk's output; the BENCH line comes from the `done` hook in every script we pass."""
    m = _BENCH.search(output)
    if not m:
        raise ValueError(f"no BENCH line in wrk output:\n{output[-2000:]}")
    kv = {k: int(v) for k, v in (item.split("=") for item in m.group(1).split())}
    seconds = kv["duration_us"] / 1e6
    non2xx = _NON2XX.search(output)
    return WrkResult(
        requests=kv["requests"],
        seconds=seconds,
        rps=kv["requests"] / seconds if seconds else 0.0,
        p50_ms=kv["p50"] / 1000,
        p99_ms=kv["p99"] / 1000,
        p999_ms=kv["p999"] / 1000,
        max_ms=kv["max"] / 1000,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        errors={k: kv[k] for k in ("connect", "read", "write", "timeout") if kv[k]},
    )


def command(
    url: str, conns: int, seconds: float, script: Path, headers: tuple[str, ...]
) -> list[str]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    cmd += ["-s", str(script)]
    for h in headers:
        cmd += ["-H", h]
    return [*cmd, url]


def run(
    url: str,
    conns: int,
    seconds: float,
    script: Path,
    headers: tuple[str, ...] = (),
    cpu: int | None = 1,
) -> WrkResult:
    """One wrk run pinned to `cpu`; raises if wrk fails or prints no result."""
    cmd = procs.pinned(command(url, conns, seconds, script, headers), cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return parse(out.stdout)
