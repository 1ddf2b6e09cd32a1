"""The CI version of the soak benchmark (RELIABILITY run L9): 60 s instead of 10 minutes."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_proxy
from .harness import REPO, UpstreamProcess, config_text, fetch, free_port

pytestmark = pytest.mark.slow

# 60 s is too short for the 100 KiB/min target (~800 KiB/min measured: closed connections
# pile up as cyclic garbage until the first full gc pass, minutes in; see the test below):
# this guards against gross leaks; the 10-minute run holds the target.
ARGS = ["--seconds", "60", "--sample-every", "2", "--reload-every", "10", "--restart-every", "30"]
ARGS += ["--max-slope", "2048"]


def test_soak_60s() -> None:
    require_proxy()
    cmd = [sys.executable, str(REPO / "benchmarks" / "soak.py"), *ARGS]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=REPO)
    result = json.loads(out.stdout)
    print("soak:", json.dumps(result))
    assert result["samples"] >= 20
    assert result["sent"] == result["answered"] > 0
    assert result["duplicated_posts"] == 0
    assert result["reloads"] >= 4 and result["upstream_restarts"] >= 1
    assert out.returncode == 0, result["problems"]


# A closed connection must be freed by reference counting: whatever only the cycle collector
# frees piles up between its full passes (minutes apart under load), and pymalloc keeps the
# pages it took. The soak's RSS slope (~260 KiB/min at 150 rps) was this pile, see
# benchmarks/mem_soak.py: the httptools parser holds bound methods of its protocol, so
# connection_lost drops the parser.
async def test_closed_connections_need_no_cycle_collection(tmp_path: Path) -> None:
    require_proxy()
    from proxy.app import App
    from proxy.dataplane.server import ClientConnection
    from proxy.dataplane.upconn import UpstreamConnection

    up = UpstreamProcess("v1", tmp_path / "v1.jsonl").start()
    config = tmp_path / "proxy.yaml"
    port = free_port()
    config.write_text(config_text(port, free_port(), {"v1": up.address}))
    app = App(str(config), str(tmp_path / "state"), watch_interval=0)
    gc.collect()
    gc.disable()
    try:
        await app.start()
        for _ in range(30):
            status, _, _ = await fetch(port, "GET", "/x", headers={"Connection": "close"})
            assert status == 200
        await asyncio.sleep(1.5)  # idle_timeout: 1s closes the pooled upstream connections
        kinds = (ClientConnection, UpstreamConnection)
        left = [o for o in gc.get_objects() if isinstance(o, kinds) and o.closed]
    finally:
        gc.enable()
        await app.stop()
        up.stop()
    assert left == []
