"""The listening side's state an exchange and a connection read per request.

`ProxyServer` (dataplane.server) is a `ServerState`: a native base below the modules that
use it, so the client connection and the exchange name it without importing the server
module (no import circle), and the compiled build reads its attributes directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.config.schema import Limits
from proxy.dataplane.accesslog import AccessLog
from proxy.dataplane.types import Goals, Metrics
from proxy.dataplane.upstream import Pools


class Listening:
    """One listener being served: its config name, the port it is bound to, its scheme."""

    __slots__ = ("name", "port", "scheme")

    def __init__(self, name: str, scheme: str = "http") -> None:
        self.name = name
        self.port = 0
        self.scheme = scheme  # "https" on a TLS listener: X-Forwarded-Proto and redirects


class ServerState:
    """The listening side's state read per request (ProxyServer adds the listeners)."""

    def __init__(
        self,
        get_table: Callable[[], Any],
        pools: Pools,
        metrics: Metrics | None,
        access_log: AccessLog | None,
        limits: Limits,
    ) -> None:
        self.get_table = get_table
        self.pools = pools
        self.metrics = metrics
        self.access_log = access_log
        self.limits = limits
        self.goals: Goals | None = None  # set by App when canaries have A/B goals
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.connections: set[Any] = set()  # its ClientConnections
        self.in_flight = 0
        self.draining = False
        self.tunnels: set[Any] = set()  # dataplane.tunnel.Tunnel: upgraded connections

    def record(self, ex: Any, code: int, seconds: float) -> None:
        """Count and log a finished exchange (ProxyServer)."""
        raise NotImplementedError
