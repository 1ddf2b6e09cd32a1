"""Start, restart and stop: state survives a restart; SIGTERM drains; unsafe admin refused."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from test_app_helpers import (
    TOKEN_ENV,
    Admin,
    config_text,
    proxy_get,
    running_app,
    start_upstream,
    upstreams,
)

ROOT = Path(__file__).resolve().parent.parent


async def test_revisions_and_weights_survive_a_restart(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            await Admin(s, app).call("PUT", "/api/v1/routes/default/weights", {"v1": 0, "v2": 1})
            app.control.save_canary_state("default", {"phase": "Progressing", "step": 3})
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            assert await proxy_get(s, app) == (200, "v2")
            assert [r["cause"] for r in app.control.history()] == ["reload", "weights"]
            assert app.control.load_canary_state("default") == {"phase": "Progressing", "step": 3}
            status, ans = await Admin(s, app).call("POST", "/api/v1/undo")
            assert status == 200 and ans["restored"] == 1  # type: ignore[index]
            assert await proxy_get(s, app) == (200, "v1")


async def test_apply_canary_sets_weights_and_match_with_a_revision(tmp_path) -> None:
    from proxy.config.schema import MatchRule, StringMatch

    rule = MatchRule(headers=(("user-id", StringMatch("exact", "tester")),))
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 100, 0))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            app.control.apply_canary("default", "default", None, ("v2", (rule,)), "canary:default")
            assert await proxy_get(s, app, headers={"user-id": "tester"}) == (200, "v2")
            assert await proxy_get(s, app, headers={"user-id": "other"}) == (200, "v1")
            app.control.apply_canary(
                "default", "default", {"v1": 0, "v2": 100}, None, "canary:default"
            )
            assert await proxy_get(s, app) == (200, "v2")
            assert app.store.history()[-1]["cause"] == "canary:default"
            assert app.routing.canary_match == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_config(
    path: Path, p1: int, p2: int, admin_host: str = "127.0.0.1", ports: tuple[int, int] = (0, 0)
) -> tuple[int, int]:
    """Fixed ports (the test talks to a subprocess); given `ports`: rewrite with v2 live."""
    proxy_port, admin_port = ports if ports != (0, 0) else (_free_port(), _free_port())
    w1, w2 = (0, 100) if ports != (0, 0) else (100, 0)
    text = config_text(p1, p2, w1, w2).replace(
        "listen: 127.0.0.1:0", f"listen: 127.0.0.1:{proxy_port}", 1
    )
    text = text.replace("{listen: 127.0.0.1:0", f"{{listen: {admin_host}:{admin_port}")
    path.write_text(text + "limits: {drain_timeout: 10s}\n")
    return proxy_port, admin_port


async def _serve(cfg: Path, state: Path, env: dict | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--state-dir", str(state),
        cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _wait_ready(s: aiohttp.ClientSession, admin_port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("proxy did not become ready")


async def test_sigterm_drains_a_slow_request_then_exits_0(tmp_path) -> None:
    r1, p1 = await start_upstream("v1", delay=1.0)
    r2, p2 = await start_upstream("v2")
    cfg = tmp_path / "c.yaml"
    proxy_port, admin_port = _serve_config(cfg, p1, p2)
    proc = await _serve(cfg, tmp_path / "s")
    try:
        async with aiohttp.ClientSession() as s:
            await _wait_ready(s, admin_port)
            slow = asyncio.create_task(s.get(f"http://127.0.0.1:{proxy_port}/slow"))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(slow, 10)
            assert resp.status == 200 and await resp.text() == "v1"
            resp.release()
            code = await asyncio.wait_for(proc.wait(), 15)
            assert code == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                await s.get(f"http://127.0.0.1:{proxy_port}/")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await r1.cleanup()
        await r2.cleanup()


async def test_sighup_or_file_watch_reloads_a_running_server(tmp_path) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        proxy_port, admin_port = _serve_config(cfg, p1, p2)
        proc = await _serve(cfg, tmp_path / "s")
        try:
            async with aiohttp.ClientSession() as s:
                await _wait_ready(s, admin_port)
                _serve_config(cfg, p1, p2, ports=(proxy_port, admin_port))  # v2 now
                proc.send_signal(signal.SIGHUP)
                url = f"http://127.0.0.1:{proxy_port}/"
                for _ in range(100):
                    async with s.get(url) as r:
                        if await r.text() == "v2":
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("SIGHUP did not reload")
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0
            assert b"SIGHUP: reload" in err


async def test_public_admin_without_token_refuses_to_start(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    _serve_config(cfg, 1, 2, admin_host="0.0.0.0")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "-c", str(cfg), "--state-dir", str(tmp_path / "s"),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"not a loopback address" in err and TOKEN_ENV.encode() in err


async def test_invalid_config_exits_1_with_the_reason(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:0\nupstreams: {}\nroutes: []\nbogus: 1\n")
    proc = await _serve(cfg, tmp_path / "s")
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 1
    assert b"bogus" in err


async def test_second_sigterm_stops_without_waiting_for_the_drain(tmp_path) -> None:
    r1, p1 = await start_upstream("v1", delay=60.0)
    cfg = tmp_path / "c.yaml"
    proxy_port, admin_port = _serve_config(cfg, p1, p1)
    cfg.write_text(cfg.read_text().replace("drain_timeout: 10s", "drain_timeout: 60s"))
    proc = await _serve(cfg, tmp_path / "s")
    try:
        async with aiohttp.ClientSession() as s:
            await _wait_ready(s, admin_port)
            hung = asyncio.create_task(s.get(f"http://127.0.0.1:{proxy_port}/hang"))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            # bounded well below the 60 s drain and the 60 s upstream delay
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            with pytest.raises(aiohttp.ClientError):
                await asyncio.wait_for(hung, 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await r1.cleanup()
