"""What the data plane reports to (metrics, A/B goals) and the header mapping routing reads."""

from __future__ import annotations

from typing import Protocol

from proxy import headers as hdr


class Metrics(Protocol):
    def observe(
        self, route: str, service: str, version: str, code: int, seconds: float
    ) -> None: ...

    def upstream_error(self, version: str, reason: str) -> None: ...
    def mirrored(self, route: str, version: str) -> None: ...


class Goals(Protocol):
    """A/B goal counting (proxy.canary.goals.GoalTracker)."""

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
