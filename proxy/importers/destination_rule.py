"""Istio DestinationRule -> upstream options per subset.

Subsets name pods by labels; the addresses come from `--endpoints`, so only the connection
pool settings of `trafficPolicy` carry over. Everything else in a traffic policy is refused.
"""

from __future__ import annotations

from typing import Any

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
    duration,
    to_num,
)

IGNORED: Table = {
    "spec.exportTo": "Istio config visibility across namespaces",
    "spec.subsets[].labels": "pod labels pick the subset's pods; --endpoints gives addresses",
    "spec.workloadSelector": "which sidecars apply the rule (mesh-internal)",
}
_TP = ("spec.trafficPolicy", "spec.subsets[].trafficPolicy")
REFUSED: Table = {
    **{f"{tp}.loadBalancer": "round-robin with passive ejection is built in" for tp in _TP},
    **{
        f"{tp}.outlierDetection": "passive ejection is built in (health_check for more)"
        for tp in _TP
    },
    **{f"{tp}.tls": "upstream TLS is set by hand: upstreams.NAME.tls (SPEC §6)" for tp in _TP},
    **{f"{tp}.portLevelSettings": "one port per upstream" for tp in _TP},
    **{
        f"{tp}.connectionPool.http.maxRequestsPerConnection": "connections are reused until idle"
        for tp in _TP
    },
}


def short_host(host: str) -> str:
    """`reviews.default.svc.cluster.local` -> `reviews`: manifests mix both spellings."""
    return host.split(".", 1)[0]


def _pool_options(report: Report, src: Source, tp: Any, path: str) -> Doc:
    """DestinationRule trafficPolicy -> upstream options (connection pool only)."""
    if not isinstance(tp, dict):
        return {}
    check_keys(report, src, tp, path, {"connectionPool"}, refused=REFUSED)
    pool = as_dict(tp.get("connectionPool"))
    check_keys(report, src, pool, f"{path}.connectionPool", {"tcp", "http"})
    tcp, http = as_dict(pool.get("tcp")), as_dict(pool.get("http"))
    check_keys(report, src, tcp, f"{path}.connectionPool.tcp", {"maxConnections", "connectTimeout"})
    known_http = {"http1MaxPendingRequests", "idleTimeout"}
    check_keys(report, src, http, f"{path}.connectionPool.http", known_http, refused=REFUSED)
    out: Doc = {}
    if "connectTimeout" in tcp:
        value = duration(
            report, src, tcp["connectTimeout"], f"{path}.connectionPool.tcp.connectTimeout"
        )
        if value:
            out["connect_timeout"] = value
    if "maxConnections" in tcp:
        out["max_connections"] = to_num(
            report, src, tcp["maxConnections"], f"{path}.connectionPool.tcp.maxConnections", True
        )
    if "http1MaxPendingRequests" in http:
        out["max_pending"] = to_num(
            report,
            src,
            http["http1MaxPendingRequests"],
            f"{path}.connectionPool.http.http1MaxPendingRequests",
            True,
        )
    if "idleTimeout" in http:
        value = duration(
            report, src, http["idleTimeout"], f"{path}.connectionPool.http.idleTimeout"
        )
        if value:
            out["idle_timeout"] = value
    return out


class Subsets:
    """DestinationRule subsets per host, with their upstream options."""

    def __init__(self) -> None:
        self.by_host: dict[str, dict[str, Doc]] = {}
        self.host_options: dict[str, Doc] = {}

    def add(self, report: Report, src: Source) -> None:
        spec = src.spec
        known = {"host", "subsets", "trafficPolicy"}
        check_keys(report, src, spec, "spec", known, IGNORED, REFUSED)
        check_metadata(report, src)
        host = short_host(str(spec.get("host", "")))
        self.host_options[host] = _pool_options(
            report, src, spec.get("trafficPolicy"), "spec.trafficPolicy"
        )
        subsets = self.by_host.setdefault(host, {})
        for i, s in enumerate(as_list(spec.get("subsets"))):
            path = f"spec.subsets[{i}]"
            check_keys(report, src, s, path, {"name", "trafficPolicy"}, IGNORED)
            opts = _pool_options(
                report, src, as_dict(s).get("trafficPolicy"), f"{path}.trafficPolicy"
            )
            subsets[str(as_dict(s).get("name"))] = opts
