"""A fleet under test: a 3-member etcd, upstreams v1/v2/v3 and 3 replicas (processes) of
`serve --store`, with the helpers the fleet scenarios share."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.fleet.harness import EtcdCluster, Replica, start_upstream

TTL = 2.0  # --election-ttl of the replicas here (the default is 5 s; failover scales with it)

BASE = """listen: 127.0.0.1:{listen}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
upstreams:
  v1: {{endpoints: ["127.0.0.1:%d"]}}
  v2: {{endpoints: ["127.0.0.1:%d"]}}
  v3: {{endpoints: ["127.0.0.1:%d"]}}
routes:
  - name: default
    route:
      - {{destination: v1, weight: 100}}
      - {{destination: v2, weight: 0}}
      - {{destination: v3, weight: 0}}
"""


def canary_yaml(interval: str, step: int, max_weight: int, extra: str = "") -> str:
    return f"""canaries:
  - name: shop
    route: default
    stable: v1
    canary: v2
    analysis:
      interval: {interval}
      threshold: 1
      step_weight: {step}
      max_weight: {max_weight}
      min_requests: 1
      metrics:
        - {{{{name: request-success-rate, min: 99}}}}
{extra}"""


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.etcd = EtcdCluster(tmp_path, size=3)
        self.upstreams: list[Any] = []
        self.replicas: list[Replica] = []
        self.cluster = "shop"

    async def start(
        self, n: int = 3, canary: str = "", v2_error_rate: float = 0.0, env: dict | None = None
    ) -> None:
        """`env` goes to the first replica only (the one that starts first, and leads)."""
        await self.etcd.start()
        for name, rate in (("v1", 0.0), ("v2", v2_error_rate), ("v3", 0.0)):
            self.upstreams.append(await start_upstream(name, error_rate=rate, seed=7))
        ports = tuple(u.port for u in self.upstreams)
        text = (BASE % ports) + canary
        url = self.etcd.store_url(self.cluster)
        for i in range(n):
            mine = env if i == 0 else None
            r = Replica(self.tmp, f"r{i}", text, url, ["--election-ttl", str(TTL)], env=mine)
            self.replicas.append(r)
        # one first, so that the others find its published config (they race otherwise: fine too)
        await self.replicas[0].start()
        await asyncio.gather(*(r.start() for r in self.replicas[1:]))

    async def aclose(self) -> None:
        for r in self.replicas:
            await r.aclose()
        for u in self.upstreams:
            await u.close()
        await self.etcd.aclose()

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.pid is not None]

    async def cluster_of(self, r: Replica) -> dict:
        return dict((await r.status())["cluster"])

    async def leader(self, timeout: float = 15.0, not_epoch: int = 0) -> tuple[Replica, int]:
        """The replica that leads (as the others see it), with a new epoch if asked."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.alive():
                try:
                    c = await self.cluster_of(r)
                except Exception:
                    continue
                if c["leader"] and c["epoch"] and c["epoch"] != not_epoch:
                    for x in self.replicas:
                        if x.name == c["leader"] and x.pid is not None:
                            return x, int(c["epoch"])
            assert time.monotonic() < deadline, "no leader in time"
            await asyncio.sleep(0.05)

    async def history(self) -> list[dict]:
        for r in self.alive():
            try:
                status, body = await r.admin("GET", "/api/v1/history")
            except Exception:
                continue
            if status == 200:
                return list(body["revisions"])
        raise AssertionError("no replica answers /api/v1/history")

    async def canary(self) -> dict:
        for r in self.alive():
            try:
                st = await r.status()
            except Exception:
                continue
            for c in st.get("canaries", []):
                if c["name"] == "shop":
                    return dict(c)
        raise AssertionError("no replica shows the canary")

    async def wait_canary(self, check: Any, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            c = await self.canary()
            if check(c):
                return c
            assert time.monotonic() < deadline, f"canary stuck at {c}"
            await asyncio.sleep(0.1)


def canary_weights(history: list[dict], route: str = "default", subset: str = "v2") -> list[float]:
    """The canary subset's weight in each controller revision of the log, in order."""
    return [
        float(h["weights"][route].get(subset, 0.0))
        for h in history
        if str(h.get("cause", "")).startswith("canary") and route in h.get("weights", {})
    ]
