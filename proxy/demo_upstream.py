"""A tiny versioned upstream for the demo and the tests (aiohttp).

Every answer names its version in the body and in `x-version`. The error rate and added
latency are settable at run time (`Behaviour`), so a test can turn a healthy canary bad.
`/health` always answers 200. Error draws are deterministic per request count (every k-th
request fails) so that a 5 % error rate is exactly 5 % in every window of 20 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Behaviour:
    version: str
    error_rate: float = 0.0  # 0..1
    latency_ms: float = 0.0
    served: int = 0
    _debt: float = 0.0

    def next_fails(self) -> bool:
        """Spread errors evenly: fail when the accumulated error share reaches one request."""
        self._debt += self.error_rate
        if self._debt >= 1.0 - 1e-9:
            self._debt -= 1.0
            return True
        return False


def make_app(b: Behaviour) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"version": b.version, "status": "ok"})

    async def handle(request: web.Request) -> web.Response:
        b.served += 1
        await request.read()
        if b.latency_ms > 0:
            await asyncio.sleep(b.latency_ms / 1000.0)
        headers = {"x-version": b.version}
        if b.next_fails():
            return web.Response(status=500, text=f"{b.version} error\n", headers=headers)
        return web.Response(text=f"{b.version}\n", headers=headers)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Upstream:
    """One running upstream on 127.0.0.1 (port 0 = a free port)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> Upstream:
        self._runner = web.AppRunner(make_app(self.behaviour), access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m proxy.demo_upstream --version v1 --port 9001`: one versioned upstream."""
    p = argparse.ArgumentParser(prog="python -m proxy.demo_upstream", description=main.__doc__)
    p.add_argument("--version", required=True, help="the version this upstream names")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--error-rate", type=float, default=0.0, help="0..1, spread evenly")
    p.add_argument("--latency-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    behaviour = Behaviour(args.version, args.error_rate, args.latency_ms)

    async def serve() -> None:
        up = await Upstream(behaviour).start(args.port, args.host)
        print(f"{args.version} listening on {args.host}:{up.port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await up.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
