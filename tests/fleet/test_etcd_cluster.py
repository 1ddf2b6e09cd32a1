"""The fleet harness itself: a real 3-member etcd survives losing its leader, and a proxy
replica process starts, serves, and dies on SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fleet.harness import EtcdCluster, Load, Replica, start_upstream

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
async def etcd(tmp_path) -> AsyncIterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path, size=3)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.aclose()


async def test_put_survives_leader_kill_and_restarted_member_catches_up(etcd) -> None:
    await etcd.put(0, "fleet/a", "one")
    assert await etcd.get(2, "fleet/a") == "one"
    assert await etcd.get(1, "fleet/missing") is None
    assert len(set(etcd.member_ids)) == 3

    leader = await etcd.leader_index()
    pid = etcd.pid(leader)
    etcd.kill(leader)
    assert etcd.pid(leader) is None and pid is not None
    survivor = (leader + 1) % 3

    deadline = time.monotonic() + 3.0
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            await etcd.put(survivor, "fleet/b", "two", timeout=1.0)
            break
        except Exception as exc:  # noqa: BLE001 - retried during the election
            last = exc
            await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"no put through member {survivor} within 3 s: {last!r}")
    new_leader = await etcd.leader_index()
    assert new_leader != leader

    await etcd.restart(leader)
    assert etcd.pid(leader) not in (None, pid)
    deadline = time.monotonic() + 5.0
    while await etcd.get(leader, "fleet/b", serializable=True) != "two":
        assert time.monotonic() < deadline, "restarted member did not catch up"
        await asyncio.sleep(0.05)
    assert await etcd.get(leader, "fleet/a") == "one"  # linearizable read through it
    cpu_rss = etcd.cpu_rss()
    assert all(cpu > 0 or rss > 0 for cpu, rss in cpu_rss), cpu_rss


async def test_whole_cluster_restarts_on_its_data(etcd) -> None:
    await etcd.put(1, "fleet/c", "three")
    etcd.stop_all()
    assert etcd.alive() == []
    await etcd.start_all_again()
    assert await etcd.get(0, "fleet/c") == "three"
    assert 0 <= await etcd.leader_index() < 3
    assert etcd.store_url("blue").endswith("/blue")
    assert etcd.store_url("blue").startswith("etcd://" + ",".join(etcd.endpoints))


CONFIG = """\
listen: 127.0.0.1:{listen}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
upstreams:
  v1: {{endpoints: ["127.0.0.1:{{port}}"]}}
routes:
  - name: default
    route: [{{destination: v1}}]
"""


async def test_replica_without_store_serves_then_dies_on_sigkill(tmp_path) -> None:
    up = await start_upstream("v1")
    replica = Replica(tmp_path, "r1", CONFIG.replace("{{port}}", str(up.port)), None)
    try:
        await replica.start()
        assert "--store" not in replica.args
        status = await replica.status()
        assert isinstance(status, dict) and status
        code, _ = await replica.admin("GET", "/api/v1/status")
        assert code == 200

        load = Load([replica.proxy_url + "/x"], rate=200, concurrency=4, total=20).start()
        await load.wait()
        summary = await load.stop()
        assert summary["ok"] == 20 and summary["errors"] == 0, summary
        assert summary["by_version"] == {"v1": 20}

        pid = replica.pid
        assert pid is not None and replica.cpu_rss()[1] > 0
        replica.kill()
        assert replica.pid is None
        await replica.proc.wait()
        assert replica.proc.returncode == -9
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientConnectionError):
                await s.get(replica.proxy_url + "/x")

        await replica.restart()  # same ports and state dir
        assert replica.pid not in (None, pid)
        load = Load(replica.proxy_url + "/y", rate=100, concurrency=2, total=5).start()
        await load.wait()
        assert (await load.stop())["ok"] == 5

        replica.stop()  # SIGSTOP: frozen, nothing answers
        load = Load(replica.proxy_url + "/z", concurrency=1, timeout=0.5, total=1).start()
        await load.wait()
        frozen = await load.stop()
        assert frozen["errors"] == 1 and "TimeoutError" in frozen["error_samples"][0], frozen
        replica.cont()
        code, _ = await replica.admin("GET", "/api/v1/status")
        assert code == 200
        assert await replica.terminate() == 0  # SIGTERM: graceful exit
        assert replica.log_text()
    finally:
        await replica.aclose()
        await up.close()
    assert replica.pid is None
