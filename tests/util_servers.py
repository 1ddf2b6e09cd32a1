"""Shared helpers for functional tests: real servers on 127.0.0.1, port 0.

- `start_upstream(handler=None)`: an aiohttp upstream. The default handler echoes the request
  as JSON (method, path_qs, headers, body size) and records it; `.connections` counts the TCP
  connections it accepted (keep-alive reuse shows as one connection for many requests).
- `config_from_yaml(text)`: a validated `Config` through the real loader (errors raise).
- `start_proxy(config)`: the real data plane in-process (ProxyServer + Pools + RoutingTable),
  every listener of the config on 127.0.0.1:0; returns a `ProxyHandle` with `.port` (the
  first listener's), `.ports` (listener name -> port), `.pools`, `.server`, `.metrics` (a
  `RecordingMetrics` unless one is passed) and `close()`.
- `raw_exchange(port, data)`: send raw bytes, read until the proxy closes or a timeout.

Every server started here is closed by the test's fixture or an explicit `close()`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.dataplane.accesslog import AccessLog
from proxy.dataplane.server import ProxyServer
from proxy.dataplane.upstream import Pools
from proxy.routing.table import build_table

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    runner: web.AppRunner
    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def close(self) -> None:
        await self.runner.cleanup()


async def echo(request: web.Request) -> web.StreamResponse:
    """Default upstream behaviour: answer with what was received."""
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body": body[:1024].decode("latin-1"),
        }
    )


async def start_upstream(handler: Handler | None = None, name: str = "") -> Upstream:
    """Start an aiohttp upstream on 127.0.0.1:0 running `handler` (default: `echo`)."""
    inner = handler or echo
    box: list[Upstream] = []

    async def record(request: web.Request) -> web.StreamResponse:
        up = box[0]
        up.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        up.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": request.headers.copy()}
        )
        return await inner(request)

    app = web.Application(client_max_size=1 << 31)
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up = Upstream(runner, port)
    box.append(up)
    return up


def config_from_yaml(text: str) -> Config:
    config, errors = load_text(text, "test.yaml")
    if config is None:
        raise ValueError("\n".join(errors))
    return config


def simple_config(
    upstreams: dict[str, list[str]],
    extra_route: str = "",
    limits: str = "",
    upstream_extra: str = "",
) -> Config:
    """One route `default` to the first upstream (weight 1 each listed in order: v1 first)."""
    ups = "\n".join(
        f"  {name}: {{endpoints: [{', '.join(repr(a) for a in eps)}]{upstream_extra}}}"
        for name, eps in upstreams.items()
    )
    first = next(iter(upstreams))
    text = f"""
listen: 127.0.0.1:0
access_log: false
upstreams:
{ups}
routes:
  - name: default
    route: [{{destination: {first}}}]
{extra_route}
{limits}
"""
    return config_from_yaml(text)


class RecordingMetrics:
    """Records every call; satisfies the ProxyMetrics methods the data plane uses."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, str, str, int]] = []
        self.errors: list[tuple[str, str]] = []
        self.mirrors: list[tuple[str, str]] = []

    def observe(self, route: str, service: str, version: str, code: int, seconds: float) -> None:
        self.observed.append((route, service, version, code))

    def upstream_error(self, version: str, reason: str) -> None:
        self.errors.append((version, reason))

    def mirrored(self, route: str, version: str) -> None:
        self.mirrors.append((route, version))


@dataclass
class ProxyHandle:
    server: ProxyServer
    pools: Pools
    metrics: Any
    config: Config

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.server.ports)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        await self.server.close()
        self.pools.close()


async def start_proxy(
    config: Config, metrics: Any = None, access_log: AccessLog | None = None
) -> ProxyHandle:
    """Start the real data plane for `config` on 127.0.0.1:0."""
    table = build_table(config)
    pools = Pools(config)
    metrics = metrics if metrics is not None else RecordingMetrics()
    server = ProxyServer(lambda: table, pools, metrics, access_log, config.limits)
    for listener in config.all_listeners():
        await server.start("127.0.0.1", 0, listener=listener.name)
    return ProxyHandle(server, pools, metrics, config)


async def raw_exchange(
    port: int, data: bytes, timeout: float = 5.0, half_close: bool = False
) -> bytes:
    """Send `data`, return everything read until the proxy closes (or `timeout`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        out = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    out += chunk
        except TimeoutError:
            pass
        return out
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def json_body(response: bytes) -> Any:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])
