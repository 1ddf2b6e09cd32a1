"""Istio DestinationRule -> upstream options per subset.

Subsets name pods by labels; the addresses come from `--endpoints`, so only the connection
pool settings of `trafficPolicy` carry over. Everything else in a traffic policy is reported.
"""

from __future__ import annotations

from typing import Any

from proxy.importers.common import Doc, Errors, Source, check_keys, duration_text, go_duration


def short_host(host: str) -> str:
    """`reviews.default.svc.cluster.local` -> `reviews`: manifests mix both spellings."""
    return host.split(".", 1)[0]


def _duration(errors: Errors, src: Source, value: Any, path: str) -> str:
    seconds = go_duration(value)
    if seconds is None:
        errors.add(src, path, f"{value!r}: not a duration")
        return "0s"
    return duration_text(seconds)


def _pool_options(errors: Errors, src: Source, tp: Any, path: str) -> Doc:
    """DestinationRule trafficPolicy -> upstream options (connection pool only)."""
    if not isinstance(tp, dict):
        return {}
    check_keys(errors, src, tp, path, {"connectionPool"})
    pool = tp.get("connectionPool") or {}
    check_keys(errors, src, pool, f"{path}.connectionPool", {"tcp", "http"})
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    check_keys(errors, src, tcp, f"{path}.connectionPool.tcp", {"maxConnections", "connectTimeout"})
    known_http = {"http1MaxPendingRequests", "idleTimeout", "maxRequestsPerConnection"}
    check_keys(errors, src, http, f"{path}.connectionPool.http", known_http)
    out: Doc = {}
    if "connectTimeout" in tcp:
        out["connect_timeout"] = _duration(
            errors, src, tcp["connectTimeout"], f"{path}.connectionPool.tcp.connectTimeout"
        )
    if "maxConnections" in tcp:
        out["max_connections"] = int(tcp["maxConnections"])
    if "http1MaxPendingRequests" in http:
        out["max_pending"] = int(http["http1MaxPendingRequests"])
    if "idleTimeout" in http:
        out["idle_timeout"] = _duration(
            errors, src, http["idleTimeout"], f"{path}.connectionPool.http.idleTimeout"
        )
    if "maxRequestsPerConnection" in http:
        errors.unsupported(src, f"{path}.connectionPool.http.maxRequestsPerConnection")
    return out


class Subsets:
    """DestinationRule subsets per host, with their upstream options."""

    def __init__(self) -> None:
        self.by_host: dict[str, dict[str, Doc]] = {}
        self.host_options: dict[str, Doc] = {}

    def add(self, errors: Errors, src: Source) -> None:
        spec = src.spec
        check_keys(errors, src, spec, "spec", {"host", "subsets", "trafficPolicy", "exportTo"})
        host = short_host(str(spec.get("host", "")))
        self.host_options[host] = _pool_options(
            errors, src, spec.get("trafficPolicy"), "spec.trafficPolicy"
        )
        subsets = self.by_host.setdefault(host, {})
        for i, s in enumerate(spec.get("subsets") or []):
            path = f"spec.subsets[{i}]"
            check_keys(errors, src, s, path, {"name", "labels", "trafficPolicy"})
            opts = _pool_options(errors, src, s.get("trafficPolicy"), f"{path}.trafficPolicy")
            subsets[str(s.get("name"))] = opts
