"""`canaryproxy demo` as a user runs it: a subprocess on free ports, real HTTP, real rollout."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from proxy.config.load import load_text
from proxy.demo import live_line, plan_lines, render_config, result_line, summary_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREE = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]


def demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "demo", *FREE, "--rps", "150", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rps(line: str, version: str) -> float:
    m = re.search(rf"{version}\s+([\d.]+) rps", line)
    return float(m.group(1)) if m else 0.0


SUMMARY = re.compile(
    r"summary (\w+): (\d+)/21 steps passed, (\d+) checks run, (\d+) failed, [\d.]+s"
)


def live(lines: list[str]) -> list[str]:
    """The live lines: they start with the time since the rollout started."""
    return [ln for ln in lines if re.match(r" *\d+\.\ds ", ln)]


def check_layout(lines: list[str]) -> None:
    """Every line fits; the plan comes before the first live line."""
    assert all(len(ln) < 100 for ln in lines), max(lines, key=len)
    first_live = lines.index(live(lines)[0])
    plan = [ln.split()[0] for ln in lines[:first_live]]
    assert {"plan", "checks", "interval", "threshold"} <= set(plan), lines[:first_live]


def test_healthy_demo_promotes_and_serves_both_versions() -> None:
    out = demo("--interval", "0.3s")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"promoted v2 in \d+s", lines[-1])
    assert any(rps(ln, "v1") > 0 and rps(ln, "v2") > 0 for ln in lines)
    assert "Succeeded" in lines[-2]
    check_layout(lines)
    assert live(lines)[-1] == lines[-3] and "Succeeded" in lines[-3]
    allow_list = [ln for ln in live(lines) if " 1/21 " in ln and "Progressing" in ln]
    assert allow_list and all("v2 0 % of weighted traffic, " in ln for ln in allow_list)
    assert all(re.search(r", \d+ rps from testers, ", ln) for ln in allow_list)
    summary = SUMMARY.fullmatch(lines[-2])
    assert summary, lines[-2]
    phase, passed, run, failed = summary.groups()
    assert (phase, passed, failed) == ("Succeeded", "21", "0") and int(run) >= 21


def test_erring_demo_rolls_back_and_still_exits_0() -> None:
    out = demo("--interval", "0.3s", "--v2-error-rate", "0.05")
    assert out.returncode == 0, out.stderr
    last = out.stdout.splitlines()[-1]
    assert last.startswith("rolled back v2: ") and "error-rate" in last
    lines = out.stdout.splitlines()
    check_layout(lines)
    summary = SUMMARY.fullmatch(lines[-2])
    assert summary, lines[-2]
    phase, passed, run, failed = summary.groups()
    assert phase == "Failed" and int(passed) < 21 and failed == "2" and int(run) >= 2
    assert "Failed" in live(lines)[-1]


def test_sigint_stops_a_running_demo_cleanly() -> None:
    cmd = [sys.executable, "-m", "proxy", "demo", *FREE, "--interval", "30s", "--rps", "20"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as proc:  # fmt: skip
        _drive(proc)


def _drive(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        port = re.search(r"proxy http://127.0.0.1:(\d+)", first)
        assert port, first
        url = f"http://127.0.0.1:{port.group(1)}/"
        deadline = time.monotonic() + 10
        while "Progressing" not in proc.stdout.readline() and time.monotonic() < deadline:
            pass
        # First step of the demo plan: only the allow-listed tester sees v2.
        req = urllib.request.Request(url, headers={"user-id": "test-user-001"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["x-version"] == "v2"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers["x-version"] == "v1"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        rest = proc.stdout.read().splitlines()
        assert rest[-1] == "stopped at step 1/21 before the rollout ended", rest
        assert rest[-2].startswith("summary Progressing: 0/21 steps passed, "), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_live_and_result_lines() -> None:
    c = {"phase": "Failed", "weight": 0.0, "failed_checks": 2, "message": "",
         "last_checks": [{"metric": "error-rate", "value": 5.1, "min": None, "max": 1,
                          "verdict": "fail"}]}  # fmt: skip
    line = live_line(3.0, c, {"v1": {"rps": 90, "error_pct": 0, "p99_ms": 2}})
    assert "Failed" in line and "error-rate=fail" in line and "v1   90.0 rps" in line
    assert result_line(c, 8, 2).startswith("rolled back v2: error-rate 5.1% > 1%")
    assert result_line({**c, "phase": "Succeeded"}, 42.2, 2) == "promoted v2 in 42s"


def test_bad_interval_is_a_clear_error() -> None:
    out = demo("--interval=soon", timeout=20)
    assert out.returncode == 2 and "--interval" in out.stderr and "Traceback" not in out.stderr


def test_busy_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = f"127.0.0.1:{s.getsockname()[1]}"
        cmd = [sys.executable, "-m", "proxy", "demo", "--listen", busy, "--admin-listen",
               "127.0.0.1:0"]  # fmt: skip
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and busy in out.stderr and "Traceback" not in out.stderr


STEPS = [{"kind": "match", "match_rules": 1}] + [{"kind": "weight"}] * 20
FAILING = [{"metric": m, "value": 1.0, "min": None, "max": 0, "verdict": "fail"}
           for m in ("request-success-rate", "error-rate", "request-duration")]  # fmt: skip


def test_plan_names_steps_checks_interval_and_threshold() -> None:
    config, errors = load_text(render_config("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:1",
                                             "127.0.0.1:2", 0.3, 3), "demo.yaml")  # fmt: skip
    assert config is not None, errors
    lines = plan_lines(config.canaries[0], "user-id")
    assert lines[:3] == [
        "plan      21 steps, then v2 is promoted; a step lasts at least one interval",
        "  1       allow-list: only requests with user-id test-user-001 reach v2 "
        "(0 % of weighted traffic)",
        "  2-21    v2 at 5 %, 10 %, 15 %, ..., 95 %, 100 % of weighted traffic; testers keep v2",
    ]
    assert lines[3] == (
        "checks    success rate >= 99 %, error rate <= 1 %, P99 <= 500 ms (on v2's traffic)"
    )
    assert lines[4].startswith("interval  0.3s: ") and "under 3 requests" in lines[4]
    assert lines[5] == "threshold 2: the 2nd failed check rolls v2 back to 0 %"
    assert all(len(ln) < 100 for ln in lines)


def test_allow_list_step_shows_the_testers_traffic() -> None:
    c = {"phase": "Progressing", "weight": 0.0, "step": 1, "steps": STEPS, "last_checks": []}
    rates = {"v1": {"rps": 135.2, "error_pct": 0, "p99_ms": 2}, "v2": {"rps": 10.4,
             "error_pct": 0, "p99_ms": 3}}  # fmt: skip
    line = live_line(0.9, c, rates)
    assert "1/21 v2 0 % of weighted traffic, 10 rps from testers, 0.0% 3ms" in line
    assert line.endswith("| v1  135.2 rps"), line
    later = live_line(1.2, {**c, "weight": 5.0, "step": 2}, rates)
    assert "2/21 v2   5% | v1  135.2 rps" in later and "testers" not in later


def test_crowded_live_lines_still_fit() -> None:
    big = {"rps": 1500.0, "error_pct": 100.0, "p99_ms": 10000}
    huge = {"rps": 123456.7, "error_pct": 100.0, "p99_ms": 300000}
    for weight, step in [(0.0, 1), (70.0, 15)]:
        c = {"phase": "Progressing", "weight": weight, "step": step, "steps": STEPS,
             "last_checks": FAILING}  # fmt: skip
        line = live_line(600.0, c, {"v1": big, "v2": big})
        assert len(line) < 100 and line.endswith(" | 3 checks fail"), line
        crowded = {**c, "phase": "WaitingPromotion"}
        assert len(live_line(12345.6, crowded, {"v1": huge, "v2": huge})) < 100
    c = {"phase": "Failed", "weight": 0.0, "last_checks": FAILING * 5, "failed_checks": 2,
         "message": ""}  # fmt: skip
    assert len(result_line(c, 8, 2)) < 100


def test_summary_lines() -> None:
    won = {"phase": "Succeeded", "step": 21, "steps": STEPS, "failed_checks": 1}
    assert summary_line(won, 7.44, 22) == (
        "summary Succeeded: 21/21 steps passed, 22 checks run, 1 failed, 7.4s"
    )
    lost = {"phase": "Failed", "step": 4, "steps": STEPS, "failed_checks": 2}
    assert summary_line(lost, 1.9, 6) == (
        "summary Failed: 3/21 steps passed, 6 checks run, 2 failed, 1.9s"
    )
