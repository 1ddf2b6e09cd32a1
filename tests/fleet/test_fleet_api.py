"""Fleet mode through the admin API, in-process: two Apps sharing one real etcd (started
here; skipped where etcd is not installed). What an operator's script sees: changes through
either replica, refusals that change nothing, the config publication, rollout actions
forwarded to the leader, and etcd going away."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from proxy.app import App
from tests.fleet.harness import ETCD, free_port
from tests.test_app_helpers import TOKEN_ENV, Admin, config_text, upstreams, write

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.skipif(not shutil.which(ETCD) and not os.path.exists(ETCD), reason="no etcd"),
]

CANARY = """canaries:
  - name: shop
    route: default
    stable: v1
    canary: v2
    analysis: {interval: 1h, step_weight: 10, max_weight: 50}
"""


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[str]:
    client, peer = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        ETCD, "--data-dir", str(tmp_path / "etcd"), "--name", "m0",
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"m0=http://127.0.0.1:{peer}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 15
            while True:
                try:
                    async with s.post(
                        f"http://127.0.0.1:{client}/v3/kv/range", json={"key": "Lw=="}
                    ) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "etcd did not start"
                await asyncio.sleep(0.1)
        yield f"etcd://127.0.0.1:{client}/t"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "t")


async def _apps(tmp_path: Path, store: str, extra: str = "") -> tuple[list[App], list[Path]]:
    apps, files = [], []
    async with upstreams() as (p1, p2):
        pass  # ports only: the routes here are never proxied to
    for i in range(2):
        f = tmp_path / f"c{i}.yaml"
        f.write_text(config_text(p1, p2, 90, 10, extra=extra))
        app = App(str(f), str(tmp_path / f"s{i}"), watch_interval=0, store=store,
                  replica=f"r{i}", election_ttl=2)  # fmt: skip
        await app.start()
        apps.append(app)
        files.append(f)
    return apps, files


def _weights(app: App) -> dict:
    return dict(app.table.weights()["default"])  # type: ignore[union-attr]


async def _until(check, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not ((await r) if asyncio.iscoroutine(r := check()) else r):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_changes_through_either_replica_and_refusals_that_change_nothing(
    tmp_path: Path, etcd: str
) -> None:
    apps, _ = await _apps(tmp_path, etcd)
    try:
        async with aiohttp.ClientSession() as s:
            a, b = Admin(s, apps[0], "t"), Admin(s, apps[1], "t")
            status, body = await a.call("PUT", "/api/v1/routes/default/weights", {"v2": 30})
            assert status == 200 and body["weights"] == {"v1": 70.0, "v2": 30.0}
            assert apps[0].table.weights()["default"] == {"v1": 70.0, "v2": 30.0}  # type: ignore[union-attr]
            await _until(lambda: _weights(apps[1]) == {"v1": 70.0, "v2": 30.0})  # within ms
            status, body = await b.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
            assert status == 200
            await _until(lambda: _weights(apps[0]) == {"v1": 0.0, "v2": 100.0})
            await _until(lambda: apps[0].store.head() == apps[1].store.head())
            head = apps[0].store.head()
            assert (await b.call("PUT", "/api/v1/routes/nope/weights", {"v2": 1}))[0] == 404
            assert (await b.call("PUT", "/api/v1/routes/default/weights", {"v9": 1}))[0] == 400
            assert apps[0].store.head() == apps[1].store.head() == head  # nothing written
            status, body = await a.call("POST", "/api/v1/undo", {})
            assert status == 200 and body["weights"]["default"] == {"v1": 70.0, "v2": 30.0}
            await _until(lambda: apps[1].store.head() == apps[0].store.head())
            _, hist = await b.call("GET", "/api/v1/history")
            revs = hist["revisions"]  # type: ignore[index]
            assert [r["cause"] for r in revs] == ["config", "weights", "switch", "undo"]
            assert [r["who"] for r in revs][1:] == ["r0", "r1", "r0"]
            _, st = await b.call("GET", "/api/v1/status")
            c = st["cluster"]  # type: ignore[index]
            assert c["replica"] == "r1" and c["leader"] in ("r0", "r1") and c["epoch"] > 0
            assert c["stale_seconds"] == 0 and c["revision"] > 0
    finally:
        for app in apps:
            await app.stop()


async def test_a_changed_file_is_published_and_a_differing_one_is_said(
    tmp_path: Path, etcd: str
) -> None:
    apps, files = await _apps(tmp_path, etcd)
    try:
        text = (
            files[1]
            .read_text()
            .replace("weight: 90", "weight: 80")
            .replace("weight: 10", "weight: 20")
        )
        write(files[1], text)
        out = await apps[1].reload_async()
        assert out["result"] == "ok"

        async def everywhere() -> bool:
            return all(
                a.table.weights()["default"] == {"v1": 80.0, "v2": 20.0}  # type: ignore[union-attr]
                for a in apps
            )

        await _until(everywhere)
        st = apps[0].control.status()  # type: ignore[union-attr]
        assert st["cluster"]["config"]["file_differs"] is True  # r0's own file says 90/10
        assert apps[1].control.status()["cluster"]["config"]["file_differs"] is False  # type: ignore[union-attr]
        write(files[1], "routes: [")  # an invalid file is refused and publishes nothing
        head = apps[1].store.head()
        assert (await apps[1].reload_async())["result"] == "rejected"
        assert apps[1].store.head() == head
    finally:
        for app in apps:
            await app.stop()


async def test_rollout_actions_on_any_replica_reach_the_leader(tmp_path: Path, etcd: str) -> None:
    apps, _ = await _apps(tmp_path, etcd, extra=CANARY)
    try:

        async def led() -> bool:
            return any(a.fleet.manager is not None for a in apps)

        await _until(led)
        follower = next(a for a in apps if a.fleet.manager is None)
        async with aiohttp.ClientSession() as s:
            admin = Admin(s, follower, "t")
            status, body = await admin.call("POST", "/api/v1/canaries/shop/start")
            assert status == 200, body
            assert "by the leader" in body["message"]  # type: ignore[index]

            async def progressing() -> bool:
                _, st = await admin.call("GET", "/api/v1/status")
                (c,) = st["canaries"]  # type: ignore[index]
                return bool(c["phase"] == "Progressing" and c["weight"] == 10)

            await _until(progressing)
            assert follower.table.weights()["default"]["v2"] == 10.0  # type: ignore[union-attr]
            assert (await admin.call("POST", "/api/v1/canaries/shop/resume"))[0] == 400
    finally:
        for app in apps:
            await app.stop()
