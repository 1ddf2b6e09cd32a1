"""kill -9 of `python -m proxy serve` mid-rollout: the restarted proxy resumes where it was."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.demo_upstream import Behaviour, Upstream

ROOT = pathlib.Path(__file__).resolve().parent.parent

CONFIG = """
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0"}}
access_log: false
upstreams:
  v1: {{endpoints: ["{v1}"]}}
  v2: {{endpoints: ["{v2}"]}}
routes:
  - name: default
    route: [{{destination: v1, weight: 100}}, {{destination: v2, weight: 0}}]
canaries:
  - name: web
    route: default
    stable: v1
    canary: v2
    analysis:
      interval: 0.4s
      threshold: 2
      step_weight: 10
      max_weight: 100
      min_requests: 3
      metrics: [{{name: error-rate, max: 1}}]
"""


class Serve:
    """One `python -m proxy serve` process; ports read from its log."""

    def __init__(self, tmp: pathlib.Path, n: int) -> None:
        self.log = tmp / f"serve{n}.log"
        cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(tmp / "config.yaml"),
               "--state-dir", str(tmp / "state")]  # fmt: skip
        self.out = open(self.log, "w")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.out, stderr=self.out)
        self.proxy = self.admin = 0

    async def ports(self) -> None:
        async with asyncio.timeout(15):
            while True:
                m = re.search(r"proxy on port (\d+), admin on port (\d+)", self.log.read_text())
                if m:
                    self.proxy, self.admin = int(m.group(1)), int(m.group(2))
                    return
                assert self.proc.poll() is None, self.log.read_text()
                await asyncio.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.out.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    v1, v2 = Upstream(Behaviour("v1")), Upstream(Behaviour("v2"))
    await v1.start()
    await v2.start()
    try:
        yield v1, v2
    finally:
        await v1.stop()
        await v2.stop()


async def _load(session: aiohttp.ClientSession, port: list[int]) -> None:
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port[0]}/") as r:
                await r.read()
        await asyncio.sleep(0.003)


async def _status(session: aiohttp.ClientSession, s: Serve) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{s.admin}/api/v1/status") as r:
        return dict(await r.json())


async def _canary(session: aiohttp.ClientSession, s: Serve) -> dict[str, Any]:
    (c,) = (await _status(session, s))["canaries"]
    return dict(c)


@pytest.mark.slow
async def test_kill_9_mid_rollout_resumes_at_the_same_weight_and_step(
    tmp_path: pathlib.Path, upstreams: tuple[Upstream, Upstream]
) -> None:
    v1, v2 = upstreams
    (tmp_path / "config.yaml").write_text(CONFIG.format(v1=v1.address, v2=v2.address))
    first = Serve(tmp_path, 1)
    second: Serve | None = None
    port = [0]
    async with aiohttp.ClientSession() as session:
        load = asyncio.create_task(_load(session, port))
        try:
            await first.ports()
            port[0] = first.proxy
            url = f"http://127.0.0.1:{first.admin}/api/v1/canaries/web/start"
            async with session.post(url) as r:
                assert r.status == 200
            async with asyncio.timeout(20):
                while (await _canary(session, first))["weight"] < 30:
                    await asyncio.sleep(0.05)
            first.kill()
            revisions = tmp_path / "state" / "revisions.jsonl"
            before = len(revisions.read_text().splitlines())
            saved = json.loads(next((tmp_path / "state").glob("*web*")).read_text())
            # The state dir is written in the background: the last durable record counts.
            assert saved["phase"] == "Progressing" and 10 <= saved["weight"] < 100

            second = Serve(tmp_path, 2)
            await second.ports()
            port[0] = second.proxy
            c = await _canary(session, second)
            assert c["phase"] == "Progressing"
            assert c["step"] >= saved["step"] + 1 and c["weight"] >= saved["weight"]
            assert c["failed_checks"] == saved["failed_checks"]
            assert c["started_at"] is not None
            weights = (await _status(session, second))["routes"][0]["weights"]
            assert 0 < weights["v2"] < 100  # no blip to 0 % or 100 %
            async with asyncio.timeout(30):
                while (c := await _canary(session, second))["phase"] not in ("Succeeded", "Failed"):
                    await asyncio.sleep(0.1)
            assert c["phase"] == "Succeeded"
            after = [json.loads(x) for x in revisions.read_text().splitlines()[before:]]
            assert after and all(r["weights"]["default"]["v2"] > 0 for r in after)
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            first.kill()
            if second is not None:
                second.kill(signal.SIGTERM)
