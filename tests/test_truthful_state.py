"""State that tells the truth: reload errors, state-dir overrides, readiness, the CLI's
reload / explain / status --watch against a real App."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from argparse import Namespace

import aiohttp
from test_app_helpers import Admin, config_text, running_app, upstreams, write

from proxy import client
from proxy.admin import readiness


async def _until(pred, what: str, tries: int = 100) -> None:
    for _ in range(tries):
        if await pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_reload_error_clears_when_the_file_is_restored_to_the_running_content(
    tmp_path,
) -> None:
    async with upstreams() as (p1, p2), aiohttp.ClientSession() as s:
        cfg = tmp_path / "c.yaml"
        good = config_text(p1, p2, 90, 10)
        cfg.write_text(good)
        async with running_app(cfg, tmp_path / "s", watch=0.05) as app:
            admin = Admin(s, app)

            async def error() -> object:
                return (await admin.call("GET", "/api/v1/status"))[1]["last_reload_error"]  # type: ignore[index]

            write(cfg, good.replace("weight: 90", "weight: -1"))
            await _until(lambda: _truthy(error), "the bad file is reported")
            write(cfg, good)  # exactly the running content again
            await _until(lambda: _falsy(error), "the error clears")
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert status == 200 and ans["result"] == "unchanged"  # type: ignore[index]


async def test_api_reload_clears_the_error_for_restored_content(tmp_path) -> None:
    async with upstreams() as (p1, p2), aiohttp.ClientSession() as s:
        cfg = tmp_path / "c.yaml"
        good = config_text(p1, p2, 90, 10)
        cfg.write_text(good)
        async with running_app(cfg, tmp_path / "s") as app:
            admin = Admin(s, app)
            write(cfg, "routes: [")
            assert (await admin.call("POST", "/api/v1/reload"))[0] == 400
            assert app.last_reload_error
            write(cfg, good)
            status, ans = await admin.call("POST", "/api/v1/reload")
            assert status == 200 and ans["result"] == "unchanged"  # type: ignore[index]
            assert app.last_reload_error is None


async def _truthy(fn) -> bool:
    return bool(await fn())


async def _falsy(fn) -> bool:
    return not await fn()


async def test_state_dir_weights_that_override_the_file_are_said(tmp_path, caplog) -> None:
    async with upstreams() as (p1, p2), aiohttp.ClientSession() as s:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(config_text(p1, p2, 95, 5))
        async with running_app(cfg, tmp_path / "s") as app:
            await Admin(s, app).call("PUT", "/api/v1/routes/default/weights", {"v2": 50})
        caplog.set_level(logging.WARNING, logger="canaryproxy")
        async with running_app(cfg, tmp_path / "s") as app:
            _, st = await Admin(s, app).call("GET", "/api/v1/status")
            route = st["routes"][0]  # type: ignore[index]
            assert route["weights"] == {"v1": 50.0, "v2": 50.0}
            assert route["override"] and route["file_weights"] == {"v1": 95.0, "v2": 5.0}
            text = client.format_status(st)  # type: ignore[arg-type]
            assert "weights override the file's v1=95 v2=5" in text
        logged = [r.getMessage() for r in caplog.records]
        assert any("override the file's v1=95 v2=5" in m and "v1=50 v2=50" in m for m in logged)


def test_readiness_is_per_route() -> None:
    pools = [
        {"name": "v1", "endpoints": [{"address": "a:1", "healthy": True, "ejected": False}]},
        {"name": "v2", "endpoints": [{"address": "b:1", "healthy": False, "ejected": False}]},
    ]
    # a dead canary does not take the gateway out of its balancer
    assert readiness({"r": {"v1": 95, "v2": 5}}, pools) == (True, "ok")
    ok, why = readiness({"r": {"v1": 95, "v2": 5}, "only-v2": {"v2": 100}}, pools)
    assert not ok and why == "route only-v2: no healthy endpoint in subset v2"
    # a checked subset counts once a probe passed
    probed = frozenset({"v1"})
    assert not readiness({"r": {"v1": 100}}, pools, probed)[0]
    assert readiness({"r": {"v1": 100}}, pools, probed, frozenset({("v1", "a:1")}))[0]


async def test_readyz_waits_for_a_passing_probe_of_a_routes_only_subset(tmp_path) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = dead.getsockname()[1]
    try:
        async with upstreams() as (p1, _p2), aiohttp.ClientSession() as s:
            check = "health_check: {path: /health, interval: 50ms, timeout: 1s, unhealthy: 3}"
            text = (
                config_text(p1, port, 100, 0).replace(
                    f'v2: {{endpoints: ["127.0.0.1:{port}"]}}',
                    f'v2: {{endpoints: ["127.0.0.1:{port}"], {check}}}',
                )
                + "  - name: only-v2\n    match: [{path: {prefix: /v2}}]\n    route: [{destination: v2}]\n"
            )
            cfg = tmp_path / "c.yaml"
            cfg.write_text(text)
            async with running_app(cfg, tmp_path / "s") as app:
                admin = Admin(s, app)
                # v2 has never passed a probe: not ready from the first answer on
                status, ans = await admin.call("GET", "/readyz")
                assert status == 503 and "only-v2" in ans["reason"]  # type: ignore[index]
                await asyncio.sleep(0.3)
                assert (await admin.call("GET", "/readyz"))[0] == 503
    finally:
        dead.close()


async def test_cli_reload_and_explain(tmp_path, capsys) -> None:
    async with upstreams() as (p1, p2):
        cfg = tmp_path / "c.yaml"
        extra = (
            "  - name: testers\n    match: [{headers: {user-id: {exact: test-user-001}}}]\n"
            "    route: [{destination: v2}]\n"
        )
        good = config_text(p1, p2, 90, 10).replace("  - name: default", extra + "  - name: default")
        cfg.write_text(good)
        async with running_app(cfg, tmp_path / "s") as app:
            url = f"http://127.0.0.1:{app.admin_port}"

            def explain(*target: str, header: list[str] = [], cookie: list[str] = []) -> int:  # noqa: B006
                ns = Namespace(admin=url, target=target[0], header=header, cookie=cookie,
                               method="get", client_ip="127.0.0.1", json=False)  # fmt: skip
                return client.cmd_explain(ns)

            assert await asyncio.to_thread(explain, "/items") == 0
            out = capsys.readouterr().out
            assert out.startswith("GET /items\n")
            assert "skipped route testers: match[0]: " in out and "user-id" in out
            assert "route default" in out and "v1 90 %" in out and "v2 10 %" in out
            code = await asyncio.to_thread(
                explain, "http://shop.example.com/items?x=1", header=["User-Id: test-user-001"]
            )
            assert code == 0
            out = capsys.readouterr().out
            assert out.startswith("GET /items?x=1\n") and "route testers" in out
            assert await asyncio.to_thread(explain, "items") == 1
            assert "starting with /" in capsys.readouterr().err

            ns = Namespace(admin=url)
            assert await asyncio.to_thread(client.cmd_reload, ns) == 0
            assert "unchanged" in capsys.readouterr().out
            write(cfg, good.replace("weight: 90", "weight: -1"))
            assert await asyncio.to_thread(client.cmd_reload, ns) == 1
            err = capsys.readouterr().err
            assert "reload rejected; the running config stays" in err and "weight" in err
            write(cfg, good.replace("weight: 90", "weight: 80"))
            assert await asyncio.to_thread(client.cmd_reload, ns) == 0
            assert "config reloaded: revision" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_status_watch_survives_an_unreachable_admin_and_resumes(tmp_path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "proxy", "status", "--watch", "--interval", "0.2",
         "--admin", f"http://127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    seen = bytearray()
    try:
        await _read_until(watch, seen, b"unreachable, retrying")
        async with upstreams() as (p1, p2):
            cfg = tmp_path / "c.yaml"
            text = config_text(p1, p2, 90, 10).replace(
                "admin: {listen: 127.0.0.1:0", f"admin: {{listen: 127.0.0.1:{port}"
            )
            cfg.write_text(text)
            async with running_app(cfg, tmp_path / "s"):
                mark = len(seen)
                await _read_until(watch, seen, b"revision 1\n", start=mark)
        mark = len(seen)
        await _read_until(watch, seen, b"last seen revision 1", start=mark)
        assert watch.poll() is None  # still running
    finally:
        watch.kill()
        watch.communicate(timeout=10)
    screens = seen.split(b"\x1b[H\x1b[2J")
    stamp = time.strftime("%Y-%m-%d").encode()
    assert all(sc.startswith(stamp) for sc in screens if sc), "every screen shows the time"


async def _read_until(proc: subprocess.Popen, seen: bytearray, want: bytes, start: int = 0) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    for _ in range(300):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = b""
        seen.extend(chunk)
        if want in seen[start:]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{want!r} never shown; output: {bytes(seen[-500:])!r}")
