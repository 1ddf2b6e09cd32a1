"""What the data plane reports to (metrics, A/B goals) and the header mapping routing reads."""

from __future__ import annotations

from typing import Final, Protocol

from proxy.dataplane.fields import LazyHeaders as LazyHeaders  # re-exported
from proxy.dataplane.fields import header_dict as header_dict  # re-exported

# Why a client connection's reads are paused (bits, set and cleared independently):
# BLOCK_UP - the upstream is slower than the client (body backpressure);
# BLOCK_PIPE - a pipelined request waits for the exchange ahead of it;
# BLOCK_CONN - the body waits for an upstream connection.
BLOCK_UP: Final = 1
BLOCK_PIPE: Final = 2
BLOCK_CONN: Final = 4


class TimedExchange(Protocol):
    """What the client's deadlines call on an exchange (dataplane.exchange.Exchange)."""

    def response_timeout(self) -> None: ...
    def client_error(self, reason: str) -> None: ...


class Metrics(Protocol):
    def observe(
        self, route: str, service: str, version: str, code: int, seconds: float
    ) -> None: ...

    def upstream_error(self, version: str, reason: str) -> None: ...
    def mirrored(self, route: str, version: str) -> None: ...


class Goals(Protocol):
    """A/B goal counting (proxy.canary.goals.GoalTracker)."""

    watched: frozenset[str]  # the routes with goals: `wants`, read as data per request

    def wants(self, route: str) -> bool: ...

    def observe(
        self,
        route: str,
        version: str,
        method: str,
        target: str,
        headers: dict[str, str],
        client_ip: str,
    ) -> None: ...
