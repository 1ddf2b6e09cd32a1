"""`serve --workers 2`: real supervisor and worker processes, real upstreams, real HTTP.

Requests go over fresh connections so the kernel (SO_REUSEPORT) spreads them over both
workers; `status` tells which worker answered how many.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_app_helpers import start_upstream

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(p1: int, p2: int, proxy: int, admin: int, w1: int = 100, w2: int = 0) -> str:
    return f"""\
listen: 127.0.0.1:{proxy}
admin: {{listen: 127.0.0.1:{admin}}}
access_log: false
upstreams:
  v1: {{endpoints: ["127.0.0.1:{p1}"]}}
  v2: {{endpoints: ["127.0.0.1:{p2}"]}}
routes:
  - name: default
    route:
      - {{destination: v1, weight: {w1}}}
      - {{destination: v2, weight: {w2}}}
limits: {{drain_timeout: 10s}}
"""


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    cfg: Path
    ports: tuple[int, int, int, int]  # v1, v2, proxy, admin
    s: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    async def status(self) -> dict:
        async with self.s.get(self.admin + "/api/v1/status") as r:
            return await r.json()

    async def get(self, path: str = "/") -> tuple[int, str]:
        """One request on a new connection."""
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as c:
            async with c.get(self.url + path) as r:
                return r.status, await r.text()

    async def counted(self, total: int, timeout: float = 10.0) -> dict:
        """Status once the workers' reports add up to `total` requests."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status()
            if sum(w["requests"] for w in st["workers"]) >= total or time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.1)


@asynccontextmanager
async def served(
    tmp_path: Path, delay: float = 0.0, config: Callable[..., str] = _config
) -> AsyncIterator[Served]:
    r1, p1 = await start_upstream("v1", delay)
    r2, p2 = await start_upstream("v2")
    ports = (p1, p2, _free_port(), _free_port())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config(*ports))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2",
        "--state-dir", str(tmp_path / "s"), cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            srv = Served(proc, cfg, ports, s)
            await _wait_ready(srv)
            yield srv
    finally:
        await _stop(proc)
        await r1.cleanup()
        await r2.cleanup()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM: the supervisor stops its workers; SIGKILL only if that hangs."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _wait_ready(srv: Served) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with srv.s.get(srv.admin + "/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if srv.proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError("proxy with 2 workers did not become ready")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _answers_within(srv: Served, body: str, seconds: float, n: int = 20) -> bool:
    """True once `n` requests in a row on new connections answer `body`, within `seconds`."""
    deadline = time.monotonic() + seconds
    streak = 0
    while time.monotonic() < deadline:
        streak = streak + 1 if await srv.get() == (200, body) else 0
        if streak >= n:
            return True
    return False


async def _all_answer_a_second_after(srv: Served, t0: float, body: str, n: int = 20) -> bool:
    """Wait until one second after `t0`; then `n` requests on new connections all answer `body`.

    How fast this client sends does not matter: only what every worker routes by then.
    """
    await asyncio.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
    return [await srv.get() for _ in range(n)] == [(200, body)] * n


async def test_two_workers_share_the_port_and_metrics_count_both(tmp_path) -> None:
    async with served(tmp_path) as srv:
        for _ in range(40):
            assert await srv.get() == (200, "v1")
        st = await srv.counted(40)
        pids = {w["pid"] for w in st["workers"]}
        assert len(pids) == 2 and srv.proc.pid not in pids
        assert all(w["alive"] and w["requests"] > 0 for w in st["workers"])
        assert st["routes"][0]["versions"]["v1"]["requests"] == 40
        async with srv.s.get(srv.admin + "/metrics") as r:
            text = await r.text()
        line = 'canaryproxy_requests_total{code="200",route="default",version="v1"}'
        assert re.search(re.escape(line) + r" 40\.0", text)


async def test_a_weights_change_reaches_every_worker_within_a_second(tmp_path) -> None:
    async with served(tmp_path) as srv:
        before = {w["pid"]: w["requests"] for w in (await srv.status())["workers"]}
        body = {"v1": 0, "v2": 100}
        async with srv.s.put(srv.admin + "/api/v1/routes/default/weights", json=body) as r:
            assert r.status == 200
        assert await _all_answer_a_second_after(srv, time.monotonic(), "v2")
        st = await srv.counted(sum(before.values()) + 20)
        # every request after the change answered v2, and both workers answered some
        assert all(w["requests"] > before[w["pid"]] for w in st["workers"])


async def test_sighup_reload_reaches_every_worker(tmp_path) -> None:
    async with served(tmp_path) as srv:
        srv.cfg.write_text(_config(*srv.ports, w1=0, w2=100))
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGHUP)
        for w in (await srv.status())["workers"]:  # as a terminal hangup would: all at once
            os.kill(w["pid"], signal.SIGHUP)
        assert await _all_answer_a_second_after(srv, t0, "v2")
        st = await srv.counted(20)
        assert all(w["requests"] > 0 and w["restarts"] == 0 for w in st["workers"])
        assert st["revision"] >= 2


async def test_a_killed_worker_is_restarted_with_current_routing_and_counts_kept(
    tmp_path,
) -> None:
    async with served(tmp_path) as srv:
        for _ in range(20):
            await srv.get()
        st = await srv.counted(20)
        body = {"v1": 0, "v2": 100}  # state the file does not have: the new worker must be sent it
        async with srv.s.put(srv.admin + "/api/v1/routes/default/weights", json=body) as r:
            assert r.status == 200
        victim = st["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            w0 = (await srv.status())["workers"][0]
            if w0["listening"] and w0["pid"] != victim and w0["restarts"] == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the killed worker was not restarted")
        for _ in range(20):
            assert await srv.get() == (200, "v2")
        # the dead worker's last report stays in the totals, the new one adds to them
        assert await _requests(srv, "v2", 20) == 20
        assert await _requests(srv, "v1", 20) == 20
        assert (await srv.status())["workers"][0]["requests"] > 0  # the new worker answered v2
        await _stop(srv.proc)
        assert srv.proc.stderr is not None
        err = await asyncio.wait_for(srv.proc.stderr.read(), 10)
        assert b"exited with signal SIGKILL; restarting" in err


async def _requests(srv: Served, version: str, expect: int) -> int:
    deadline = time.monotonic() + 5
    while True:
        n = (await srv.status())["routes"][0]["versions"][version]["requests"]
        if n >= expect or time.monotonic() > deadline:
            return int(n)
        await asyncio.sleep(0.1)


async def test_sigterm_drains_every_worker_and_exits_0(tmp_path) -> None:
    async with served(tmp_path, delay=1.0) as srv:
        pids = [w["pid"] for w in (await srv.status())["workers"]]
        slow = [asyncio.create_task(srv.get("/slow")) for _ in range(6)]
        await asyncio.sleep(0.4)
        srv.proc.send_signal(signal.SIGTERM)
        assert [await asyncio.wait_for(t, 10) for t in slow] == [(200, "v1")] * 6
        assert await asyncio.wait_for(srv.proc.wait(), 15) == 0
        assert all(_gone(p) for p in pids)
        with pytest.raises(aiohttp.ClientConnectionError):
            await srv.get()


async def test_bad_worker_count_is_refused(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_config(1, 2, _free_port(), _free_port()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "0",
        "--state-dir", str(tmp_path / "s"), cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2 and b"--workers must be at least 1" in err


async def test_a_busy_port_is_a_startup_error(tmp_path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(_config(1, 2, busy.getsockname()[1], _free_port()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--workers", "2",
            "--state-dir", str(tmp_path / "s"), cwd=ROOT, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 1 and b"cannot listen on 127.0.0.1:" in err


def _checked_config(checked: int, p1: int, p2: int, proxy: int, admin: int) -> str:
    """v1 has two endpoints (one is `checked`) under an active health check; v2 takes none."""
    check = "health_check: {path: /health, interval: 50ms, timeout: 1s, unhealthy: 2, healthy: 1}"
    return _config(p1, p2, proxy, admin).replace(
        f'v1: {{endpoints: ["127.0.0.1:{p1}"]}}',
        f'v1: {{endpoints: ["127.0.0.1:{p1}", "127.0.0.1:{checked}"], {check}}}',
    )


async def test_active_health_from_the_supervisor_reaches_every_worker(tmp_path) -> None:
    state = {"ok": True}

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.Response(status=200 if state["ok"] else 503)
        return web.Response(text="checked")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    checked = runner.addresses[0][1]
    try:
        async with served(tmp_path, config=functools.partial(_checked_config, checked)) as srv:
            bodies = {(await srv.get())[1] for _ in range(30)}
            assert bodies == {"v1", "checked"}
            state["ok"] = False  # only the supervisor probes; the workers must be told
            assert await _answers_within(srv, "v1", 5.0, n=30)
            st = await srv.status()
            endpoints = {e["address"]: e["healthy"] for e in st["upstreams"][0]["endpoints"]}
            assert endpoints[f"127.0.0.1:{checked}"] is False
    finally:
        await runner.cleanup()


async def test_workers_exit_when_the_supervisor_dies(tmp_path) -> None:
    async with served(tmp_path) as srv:
        pids = [w["pid"] for w in (await srv.status())["workers"]]
        srv.proc.kill()  # no SIGTERM forwarded: the workers notice the closed socketpair
        await srv.proc.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [p for p in pids if not _gone(p)]
        for p in left:  # never leave a process behind, even when the test fails
            os.kill(p, signal.SIGKILL)
        assert not left


def _dead_endpoint_config(dead: int, p1: int, p2: int, proxy: int, admin: int) -> str:
    return _config(p1, p2, proxy, admin).replace(
        f'v1: {{endpoints: ["127.0.0.1:{p1}"]}}',
        f'v1: {{endpoints: ["127.0.0.1:{p1}", "127.0.0.1:{dead}"]}}',
    )


async def test_status_shows_an_endpoint_a_worker_ejected(tmp_path) -> None:
    dead = _free_port()  # nothing listens there: connects are refused
    config = functools.partial(_dead_endpoint_config, dead)
    async with served(tmp_path, config=config) as srv:
        for _ in range(60):
            await srv.get()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            (v1,) = [u for u in (await srv.status())["upstreams"] if u["name"] == "v1"]
            ejected = {e["address"]: e["ejected"] for e in v1["endpoints"]}
            if ejected[f"127.0.0.1:{dead}"]:
                break
            await asyncio.sleep(0.1)
        assert ejected == {f"127.0.0.1:{srv.ports[0]}": False, f"127.0.0.1:{dead}": True}


async def test_a_second_sigterm_stops_the_workers_without_waiting(tmp_path) -> None:
    async with served(tmp_path, delay=30.0) as srv:
        pids = [w["pid"] for w in (await srv.status())["workers"]]
        hung = [asyncio.create_task(srv.get("/hang")) for _ in range(4)]
        await asyncio.sleep(0.4)
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.4)
        srv.proc.send_signal(signal.SIGTERM)
        # bounded well below the 10 s drain and the 30 s upstream delay
        assert await asyncio.wait_for(srv.proc.wait(), 8) == 0
        assert all(_gone(p) for p in pids)
        for t in hung:
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(t, 5)
