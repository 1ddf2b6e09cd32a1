"""Shared parts of the functional tests: real upstreams, a real App, a bounded load."""

from __future__ import annotations

import asyncio
import io
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.app import App

TOKEN_ENV = "CANARYPROXY_TEST_TOKEN"


async def start_upstream(name: str, delay: float = 0.0) -> tuple[web.AppRunner, int]:
    """An HTTP server answering every path with its own name (and /health with 200)."""

    async def handle(request: web.Request) -> web.Response:
        if delay and request.path != "/health":
            await asyncio.sleep(delay)
        return web.Response(text=name, headers={"x-version": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


def config_text(p1: int, p2: int, w1: float = 100, w2: float = 0, extra: str = "") -> str:
    return f"""\
listen: 127.0.0.1:0
admin: {{listen: 127.0.0.1:0, token_env: {TOKEN_ENV}}}
access_log: false
upstreams:
  v1: {{endpoints: ["127.0.0.1:{p1}"]}}
  v2: {{endpoints: ["127.0.0.1:{p2}"]}}
routes:
  - name: default
    preview: {{}}
    route:
      - {{destination: v1, weight: {w1}}}
      - {{destination: v2, weight: {w2}}}
{extra}"""


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and ConfigMaps do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@asynccontextmanager
async def upstreams(delay: float = 0.0) -> AsyncIterator[tuple[int, int]]:
    r1, p1 = await start_upstream("v1", delay)
    r2, p2 = await start_upstream("v2", delay)
    try:
        yield p1, p2
    finally:
        await r1.cleanup()
        await r2.cleanup()


@asynccontextmanager
async def running_app(config: Path, state: Path, watch: float = 0) -> AsyncIterator[App]:
    app = App(str(config), str(state), watch_interval=watch)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


class Admin:
    """A small admin API client for tests."""

    def __init__(self, session: aiohttp.ClientSession, app: App, token: str = "") -> None:
        self.s, self.base, self.token = session, f"http://127.0.0.1:{app.admin_port}", token

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> tuple[int, object]:
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        kw: dict = (
            {"data": io.BytesIO(raw)}
            if raw is not None
            else {"json": body}
            if body is not None
            else {}
        )
        async with self.s.request(method, self.base + path, headers=headers, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, text


async def proxy_get(
    s: aiohttp.ClientSession, app: App, path: str = "/", headers: dict | None = None
) -> tuple[int, str]:
    async with s.get(f"http://127.0.0.1:{app.proxy_port}{path}", headers=headers or {}) as r:
        return r.status, await r.text()


async def bounded_load(
    app: App, stop: asyncio.Event, workers: int = 4, limit: int = 20000
) -> Counter:
    """Send requests until `stop` is set (or `limit` is reached); count answers by body
    for 200s and by status otherwise; transport errors count as "error"."""
    seen: Counter = Counter()

    async def worker(s: aiohttp.ClientSession) -> None:
        while not stop.is_set() and sum(seen.values()) < limit:
            try:
                status, body = await proxy_get(s, app)
                seen[body if status == 200 else f"status {status}"] += 1
            except aiohttp.ClientError as exc:
                seen[f"error {type(exc).__name__}"] += 1

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await asyncio.wait_for(asyncio.gather(*(worker(s) for _ in range(workers))), 120)
    return seen


def failures(seen: Counter) -> int:
    return sum(n for k, n in seen.items() if k not in ("v1", "v2"))
