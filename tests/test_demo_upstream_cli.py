"""`python -m proxy.demo_upstream`: the versioned upstream the compose kit runs."""

from __future__ import annotations

import subprocess
import sys
import urllib.request


def test_demo_upstream_serves_its_version_until_stopped() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.demo_upstream", "--version", "v7", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "v7 listening on 127.0.0.1:PORT"
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/any", timeout=5) as r:
            assert r.read() == b"v7\n"
            assert r.headers["x-version"] == "v7"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
