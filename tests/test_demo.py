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

from proxy.demo import live_line, result_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREE = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]


def demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "demo", *FREE, "--rps", "150", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rps(line: str, version: str) -> float:
    m = re.search(rf"{version}\s+([\d.]+) rps", line)
    return float(m.group(1)) if m else 0.0


def test_healthy_demo_promotes_and_serves_both_versions() -> None:
    out = demo("--interval", "0.3s")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"promoted v2 in \d+s", lines[-1])
    assert any(rps(ln, "v1") > 0 and rps(ln, "v2") > 0 for ln in lines)
    assert "Succeeded" in lines[-2]


def test_erring_demo_rolls_back_and_still_exits_0() -> None:
    out = demo("--interval", "0.3s", "--v2-error-rate", "0.05")
    assert out.returncode == 0, out.stderr
    last = out.stdout.splitlines()[-1]
    assert last.startswith("rolled back v2: ") and "error-rate" in last


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
