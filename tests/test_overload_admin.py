"""The admin port stays reachable while the data plane is saturated (hardening: overload)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.test_app_helpers import config_text, running_app, upstreams


async def test_admin_answers_while_every_proxy_connection_is_busy(tmp_path: Path) -> None:
    async with upstreams(delay=1.5) as (p1, p2):
        config = tmp_path / "config.yaml"
        config.write_text(config_text(p1, p2, extra="limits: {max_connections: 4}\n"))
        async with running_app(config, tmp_path / "state") as app:
            proxy = f"http://127.0.0.1:{app.proxy_port}/slow"
            admin = f"http://127.0.0.1:{app.admin_port}"
            conn = aiohttp.TCPConnector(limit=0, force_close=True)
            async with aiohttp.ClientSession(connector=conn) as s:

                async def get(url: str) -> int:
                    async with s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                        await r.read()
                        return r.status

                busy = [asyncio.create_task(get(proxy)) for _ in range(4)]
                await asyncio.sleep(0.3)  # all four are in flight, the limit is reached
                refused = await asyncio.gather(get(proxy), return_exceptions=True)
                assert isinstance(refused[0], aiohttp.ClientError), refused
                async with asyncio.timeout(1.0):  # long before the slow upstream answers
                    assert await get(admin + "/healthz") == 200
                    assert await get(admin + "/metrics") == 200
                assert not any(t.done() for t in busy)  # still saturated while admin answered
                assert await asyncio.gather(*busy) == [200, 200, 200, 200]
