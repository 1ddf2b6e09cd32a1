"""The Prometheus provider against a real Prometheus scraping the proxy's /metrics every 1 s."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
from test_canary_functional import Rig

from proxy.canary.providers import first_value, render

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
needs_prometheus = pytest.mark.skipif(
    not pathlib.Path(PROMETHEUS).exists(), reason="prometheus binary not installed"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def analysis(address: str) -> str:
    rps = (
        'sum(rate(canaryproxy_requests_total{route="{{ route }}",version="{{ version }}"}'
        "[{{ interval }}]))"
    )
    return f"""
      interval: 3s
      threshold: 2
      step_weight: 50
      max_weight: 100
      min_requests: 10
      progress_deadline: 60s
      provider: {{type: prometheus, address: "{address}"}}
      metrics:
        - {{name: error-rate, max: 1}}
        - {{name: request-duration, max: 500}}
        - name: canary-rps
          query: '{rps}'
          min: 1
"""


class Prom:
    def __init__(self, tmp: pathlib.Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, admin_port: int) -> None:
        cfg = self.tmp / "prometheus.yml"
        cfg.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: canaryproxy\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{admin_port}']}}]\n"
        )
        cmd = [PROMETHEUS, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{self.port}",
               f"--storage.tsdb.path={self.tmp / 'tsdb'}"]  # fmt: skip
        self.log = open(self.tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)

    async def ready(self, session: aiohttp.ClientSession) -> None:
        url = f"http://127.0.0.1:{self.port}/-/ready"
        async with asyncio.timeout(20):
            while True:
                try:
                    async with session.get(url) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()


@pytest.fixture
async def prom_rig(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Rig, Prom]]:
    rig, prom = Rig(tmp_path), Prom(tmp_path, free_port())
    try:
        yield rig, prom
    finally:
        await rig.close()
        prom.stop()


async def _run(rig: Rig, prom: Prom) -> dict:
    app = await rig.start(analysis(f"http://127.0.0.1:{prom.port}"))
    prom.start(app.admin_port)
    assert rig.session is not None
    await prom.ready(rig.session)
    rig.load()
    await rig.action("start")
    return await rig.wait_phase({"Succeeded", "Failed"}, timeout=90)


@pytest.mark.slow
@needs_prometheus
async def test_canary_promotes_on_prometheus_data(prom_rig: tuple[Rig, Prom]) -> None:
    rig, prom = prom_rig
    c = await _run(rig, prom)
    assert c["phase"] == "Succeeded", c
    checks = {ch["metric"]: ch for ch in c["last_checks"]}
    assert checks["canary-rps"]["value"] > 1 and checks["error-rate"]["value"] == 0
    assert 0 < checks["request-duration"]["value"] < 500


@pytest.mark.slow
@needs_prometheus
async def test_canary_rolls_back_on_prometheus_data(prom_rig: tuple[Rig, Prom]) -> None:
    rig, prom = prom_rig
    rig.v2.behaviour.error_rate = 0.2
    c = await _run(rig, prom)
    assert c["phase"] == "Failed", c
    (err,) = [ch for ch in c["last_checks"] if ch["metric"] == "error-rate"]
    assert err["verdict"] == "fail" and err["value"] == pytest.approx(20, abs=8)


def test_render_fills_every_placeholder() -> None:
    q = render("x{r='{{route}}',v='{{ version }}',s='{{ service }}'}[{{ interval }}]",
               "default", "v2", "30s", "shop")  # fmt: skip
    assert q == "x{r='default',v='v2',s='shop'}[30s]"


@pytest.mark.parametrize(
    "body,value",
    [
        ({"status": "success", "data": {"resultType": "vector",
          "result": [{"metric": {}, "value": [1, "2.5"]}]}}, 2.5),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, None),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}}, None),
        ({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}}, 7.0),
        ({"status": "error", "error": "bad query"}, None),
    ],
)  # fmt: skip
def test_first_value_parses_query_answers(body: dict, value: float | None) -> None:
    assert first_value(body) == value
