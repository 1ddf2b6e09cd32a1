"""`python -m benchmarks.profile [--scenario small] [--seconds 10] [--sampler perf|py-spy]`.

Where our CPU goes. Starts the upstream pair and our proxy (pinned as in the benchmark),
drives it with wrk at 64 connections and samples it.

- The compiled build is sampled with `perf record --call-graph dwarf` (Debian `linux-perf`;
  root, or `kernel.perf_event_paranoid` <= 1): compiled frames are C frames, and perf reads
  them without stopping the process. The report is `benchmarks.perf_report` (the raw
  `perf script` text is kept as `perf-<scenario>.txt`).
- The pure build is sampled with py-spy (`pip install py-spy`; needs ptrace rights): its
  collapsed stacks (`profile-<scenario>.txt`, for flamegraph tools), the share of samples
  per phase of the request path, own time per file and per function. `--sampler py-spy` on
  a compiled build adds `--native` (py-spy then stops the process for every sample: the
  proxy slows down many times over, so the shares are not a profile to act on).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import perf_report, procs, proxies, scenarios, wrk
from benchmarks.run import DEFAULT_OUT

NATIVE: list[str] = []  # ["--native"] also samples C frames (uvloop, httptools, the kernel entry)


def record(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "500",
        "--format",
        "raw",
        *(NATIVE or ["--nonblocking"]),
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_file(frame: str) -> str:
    # a raw frame reads "func (path/to/file.py:123)"
    if "(" not in frame:
        return frame
    where = frame.rsplit("(", 1)[1].rstrip(")")
    return where.split(":")[0]


# Phases of one proxied request, by function name (py-spy frames read "Class.method (file:line)").
# A sample goes to the phase of the frame nearest its leaf that names one; names marked
# leaf-only count only as the leaf itself (they are ancestors of everything else too).
PHASES: tuple[tuple[str, frozenset[str], bool], ...] = (
    (
        "write (send syscalls)",
        frozenset(
            {
                "Exchange._send_head",
                "ClientConnection.uncork",
                "ClientConnection.write",
                "ClientConnection.writelines",
            }
        ),
        False,
    ),
    ("route (RoutingTable.decide)", frozenset({"RoutingTable.decide"}), False),
    ("metrics", frozenset({"ProxyMetrics.observe", "ProxyMetrics.upstream_error"}), False),
    (
        "header blocks",
        frozenset(
            {
                "request_lines",
                "response_lines",
                "Exchange._build_head",
                "Exchange._response_head",
                "Exchange._policy",
            }
        ),
        False,
    ),
    (
        "pick (upstream pool)",
        frozenset(
            {
                "UpstreamPool.acquire",
                "UpstreamPool._give",
                "UpstreamPool._pick",
                "UpstreamPool.release",
            }
        ),
        True,
    ),
    (
        "timers",
        frozenset(
            {"Exchange._arm_response_timer", "ClientConnection._arm_idle", "Exchange._cancel_timer"}
        ),
        False,
    ),
    (
        "parse client request",
        frozenset(
            {
                "ClientConnection.data_received",
                "ClientConnection.on_header",
                "ClientConnection.on_url",
                "ClientConnection.on_message_begin",
                "_check_request_line",
            }
        ),
        True,
    ),
    (
        "parse upstream response",
        frozenset(
            {
                "UpstreamConnection.data_received",
                "UpstreamConnection.on_header",
                "UpstreamConnection.on_message_begin",
            }
        ),
        True,
    ),
    ("event loop: epoll, read(), dispatch (uvloop, native)", frozenset({"Runner.run"}), True),
)


def phase_of(stack: list[str]) -> str:
    names = [f.split(" (")[0] for f in stack]
    for depth, name in enumerate(reversed(names)):
        for phase, members, leaf_only in PHASES:
            if name in members and (depth == 0 or not leaf_only):
                return phase
    return "other Protocol/Exchange glue"


def phases(collapsed: str) -> dict[str, float]:
    """Share of samples per request phase."""
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[phase_of(stack.split(";"))] += int(count)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in counts.most_common()}


def summarize(collapsed: str, top: int = 25) -> str:
    """Own-time share per file and per leaf function, from py-spy's collapsed stacks."""
    by_file: collections.Counter[str] = collections.Counter()
    by_func: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        n = int(count)
        total += n
        by_file[_short(_frame_file(leaf))] += n
        by_func[_short(leaf)] += n
    lines = [f"samples: {total}", "", "by phase of the request:"]
    lines += [f"  {share:6.1%}  {name}" for name, share in phases(collapsed).items()]
    lines += ["", "own time by file:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_file.most_common(top)]
    lines += ["", "own time by function:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in by_func.most_common(top)]
    return "\n".join(lines)


def _short(text: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in text:
            head, _, tail = text.partition(marker)
            text = head.rsplit("(", 1)[0] + "(" + tail if "(" in head else tail
    return text


def record_perf(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    cmd = ["perf", "record", "-F", "1000", "--call-graph", "dwarf,8192", "-p", str(pid)]
    cmd += ["-o", str(out), "--", "sleep", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run(scenario: str, seconds: int, out: Path, sampler: str = "py-spy") -> str:
    procs.install_cleanup()
    s = scenarios.by_name((scenario,))[0]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="canaryproxy-prof-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        ours = proxies.start_ours(d, up, s)
        try:
            script = d / "s.lua"
            script.write_text(scenarios.wrk_script(s))
            url = f"http://127.0.0.1:{ours.port}{s.path}"
            wrk.run(url, 64, 1, script, s.headers)
            if sampler == "perf":
                spy = record_perf(ours.proc.pid, seconds, d / "perf.data")
            else:
                spy = record(ours.proc.pid, seconds, out / f"profile-{scenario}.txt")
            time.sleep(0.5)
            res = wrk.run(url, 64, seconds, script, s.headers)
            _, err = spy.communicate(timeout=seconds + 30)
            if spy.returncode != 0:
                raise RuntimeError(f"{sampler} failed: {err.decode()[-500:]}")
            if sampler == "perf":
                text = subprocess.run(
                    ["perf", "script", "-F", "ip,sym,dso", "-i", str(d / "perf.data")],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                (out / f"perf-{scenario}.txt").write_text(text)
        finally:
            procs.stop(ours.proc)
            procs.stop(up_proc)
    head = f"{scenario}: {res.rps:,.0f} rps at 64 connections while sampled ({sampler})"
    if sampler == "perf":
        return head + "\n" + perf_report.summarize(text.splitlines())
    return head + "\n" + summarize((out / f"profile-{scenario}.txt").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--scenario", default="small")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--sampler", choices=("perf", "py-spy"), help="default: by the build")
    p.add_argument("--native", action="store_true", help="py-spy: sample C frames too (slow)")
    args = p.parse_args(argv)
    from proxy.build import build

    sampler = args.sampler or ("perf" if build() == "compiled" else "py-spy")
    if sampler == "py-spy" and (args.native or build() == "compiled"):
        # a compiled hot path runs as C: without native frames py-spy sees none of it
        NATIVE.append("--native")
    tool = "perf" if sampler == "perf" else "py-spy"
    if not shutil.which(tool):
        hint = "apt-get install linux-perf" if tool == "perf" else "pip install py-spy"
        print(f"{tool} not found: {hint}", file=sys.stderr)
        return 1
    print(f"profiling the {build()} build with {sampler}{' --native' if NATIVE else ''}")
    print(run(args.scenario, args.seconds, args.out, sampler))
    return 0


if __name__ == "__main__":
    sys.exit(main())
