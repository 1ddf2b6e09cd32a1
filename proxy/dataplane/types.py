"""What the data plane reports to (metrics, A/B goals) and the header mapping routing reads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

from proxy import headers as hdr

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


def header_dict(headers: list[hdr.Header]) -> dict[str, str]:
    """Lower-case name -> value (repeated fields joined with ", "), as routing reads them."""
    out: dict[str, str] = {}
    for lname, _, value in headers:
        name = lname.decode("latin-1")
        v = value.decode("latin-1")
        out[name] = out[name] + ", " + v if name in out else v
    return out


class LazyHeaders(Mapping[str, str]):
    """The request's headers as routing reads them (`header_dict`), built on first use: a
    table whose rules read no header (plain weighted split) never pays for the dict."""

    __slots__ = ("_raw", "_d")

    def __init__(self, raw: list[hdr.Header]) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        d = self._d
        if d is None:
            d = self._d = header_dict(self._raw)
        return d

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())
