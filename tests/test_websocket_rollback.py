"""`canaries[].analysis.close_tunnels_on_rollback`: a rollback closes the canary version's
open WebSocket tunnels (so their users reconnect to stable), and only when asked; one
process and `serve --workers 2`, real upstreams and aiohttp WebSocket clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType
from util_servers import start_upstream

from proxy.app import App
from proxy.canary import machine as m
from tests.test_app_helpers import TOKEN_ENV, Admin, config_text
from tests.test_websocket import ws_app

CANARY = """canaries:
  - name: shop
    route: default
    stable: v1
    canary: v2
    mode: ab
    analysis:
      interval: 1h
      iterations: 100
      match: [{{headers: {{x-beta: {{exact: "1"}}}}}}]
      close_tunnels_on_rollback: {close}
"""


async def _round(ws: aiohttp.ClientWebSocketResponse, text: str) -> str:
    await ws.send_str(text)
    return await asyncio.wait_for(ws.receive_str(), 3)


async def _rollback_closes(tmp_path: Path, close: bool, workers: int) -> tuple[bool, bool]:
    """(was the canary's tunnel closed by the abort, was the stable one)."""
    v1, v2 = await start_upstream(ws_app("v1")), await start_upstream(ws_app("v2"))
    cfg = tmp_path / "c.yaml"
    extra = CANARY.format(close=str(close).lower())
    cfg.write_text(config_text(v1.port, v2.port, extra=extra))
    app = App(str(cfg), str(tmp_path / "state"), workers=workers)
    await app.start()
    try:
        async with aiohttp.ClientSession() as s:
            admin = Admin(s, app, "t")
            status, _ = await admin.call("POST", "/api/v1/canaries/shop/start")
            assert status == 200
            url = f"http://127.0.0.1:{app.proxy_port}/chat"
            beta = await s.ws_connect(url, headers={"x-beta": "1"})
            plain = await s.ws_connect(url)
            assert await _round(beta, "a") == "v2:a"  # the A/B match sends testers to v2
            assert await _round(plain, "a") == "v1:a"
            status, _ = await admin.call("POST", "/api/v1/canaries/shop/abort")
            assert status == 200
            closed = False
            try:
                msg = await asyncio.wait_for(beta.receive(), 1.5)
                closed = msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
            except TimeoutError:
                assert await _round(beta, "b") == "v2:b"  # still open, still on v2
            stable_open = await _round(plain, "b") == "v1:b"
            for ws in (beta, plain):
                await ws.close()
            again = await s.ws_connect(url, headers={"x-beta": "1"})
            assert await _round(again, "c") == "v1:c"  # after the rollback: stable for all
            await again.close()
            return closed, not stable_open
    finally:
        await app.stop()
        await v1.close()
        await v2.close()


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "t")


async def test_rollback_closes_the_canary_tunnels_when_asked(tmp_path: Path) -> None:
    assert await _rollback_closes(tmp_path, close=True, workers=1) == (True, False)


async def test_rollback_keeps_tunnels_by_default(tmp_path: Path) -> None:
    assert await _rollback_closes(tmp_path, close=False, workers=1) == (False, False)


@pytest.mark.slow
async def test_rollback_closes_the_canary_tunnels_in_every_worker(tmp_path: Path) -> None:
    assert await _rollback_closes(tmp_path, close=True, workers=2) == (True, False)


def test_the_machine_asks_for_the_close_only_when_configured() -> None:
    plan = (m.PlanStep("weight", weight=10),)
    for configured in (True, False):
        cfg = m.Settings(plan=plan, close_tunnels_on_rollback=configured)
        s = m.State(m.Phase.PROGRESSING, 1, 10, 0.0, 0.0)
        out = m.step(cfg, s, m.Abort(5.0, "operator"), "shop")
        assert not isinstance(out, m.Rejected)
        _, cmds = out
        assert any(isinstance(c, m.CloseTunnels) for c in cmds) is configured
        assert any(isinstance(c, m.SetRoute) for c in cmds)  # the route moves back first
