"""Gateway API Gateways -> `listeners:`, and which hosts each HTTPRoute serves on them.

Rules kept here (the Gateway API's):
- each distinct listener port becomes one listener `http-PORT` on 0.0.0.0:PORT (several
  Gateway listeners on one port share it, told apart by hostname);
- a route's hosts on a listener are the intersection of its `hostnames` with the listener's
  `hostname`: no hostnames takes the listener's; a listener without one takes the route's;
  `*.example.com` matches one or more labels; two wildcards keep the narrower;
- a route whose hostnames intersect no listener it names is not attached: it routes nothing;
- without a Gateway among the files, `parentRefs` are noted and every route serves its own
  `hostnames` on the one listener.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
    to_num,
)

KINDS = ("Gateway",)
IGNORED: Table = {
    "spec.gatewayClassName": "which controller runs the Gateway; here canaryproxy does",
    "spec.listeners[].allowedRoutes": "which namespaces may attach routes (Kubernetes RBAC)",
    "spec.infrastructure": "labels and annotations for the Gateway's Kubernetes resources",
    "spec.addresses": "addresses Kubernetes assigns; each listener binds 0.0.0.0:PORT",
}
REFUSED: Table = {
    "spec.listeners[].tls": "TLS listeners are written by hand (listeners[].tls, SPEC §6)",
    "spec.listeners[].protocol": "only HTTP listeners (HTTPS, TLS, TCP, UDP are not)",
}
ROUTE_IGNORED: Table = {
    "spec.parentRefs": "which Gateway serves the route; no Gateway among the files, so the "
    "route serves its hostnames on the one listener",
}


@dataclass(frozen=True)
class Listener:
    gateway: str  # namespace/name
    name: str
    port: int
    hostname: str | None


def _matches(host: str, wildcard: str) -> bool:
    return host.endswith(wildcard[1:]) and len(host) > len(wildcard) - 1


def intersect(route_host: str, listener_host: str | None) -> str | None:
    """The hostname a route serves on a listener, or None when they do not intersect."""
    if listener_host is None:
        return route_host
    r_wild, l_wild = route_host.startswith("*."), listener_host.startswith("*.")
    if not r_wild and not l_wild:
        return route_host if route_host == listener_host else None
    if not l_wild:
        return listener_host if _matches(listener_host, route_host) else None
    if not r_wild:
        return route_host if _matches(route_host, listener_host) else None
    if route_host.endswith(listener_host[1:]):
        return route_host
    return listener_host if listener_host.endswith(route_host[1:]) else None


class Gateways:
    """The Gateways of the file set and their listeners."""

    def __init__(self, report: Report, sources: list[Source]) -> None:
        self.listeners: list[Listener] = []
        for src in sources:
            if src.kind == "Gateway":
                self._add(report, src)

    def _add(self, report: Report, src: Source) -> None:
        check_keys(report, src, src.spec, "spec", {"listeners"}, IGNORED, REFUSED)
        check_metadata(report, src)
        key = f"{src.namespace or 'default'}/{src.name}"
        for i, ln in enumerate(as_list(src.spec.get("listeners"))):
            path, ln = f"spec.listeners[{i}]", as_dict(ln)
            check_keys(
                report, src, ln, path, {"name", "port", "protocol", "hostname"}, IGNORED, REFUSED
            )
            if str(ln.get("protocol", "HTTP")) != "HTTP":
                report.unsupported(src, f"{path}.protocol", REFUSED)
                continue
            host = str(ln["hostname"]).lower() if ln.get("hostname") else None
            port = to_num(report, src, ln.get("port", 80), f"{path}.port", integer=True)
            if port is not None:
                self.listeners.append(Listener(key, str(ln.get("name")), int(port), host))

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def config(self) -> list[Doc]:
        ports = sorted({ln.port for ln in self.listeners})
        return [{"name": f"http-{p}", "listen": f"0.0.0.0:{p}"} for p in ports]

    def attach(self, report: Report, src: Source) -> tuple[list[str], list[str]] | None:
        """(hosts, listener names) of one HTTPRoute; None when it attaches nowhere."""
        hostnames = [str(h).lower() for h in as_list(src.spec.get("hostnames"))]
        if not self.listeners:
            if "parentRefs" in src.spec:
                report.ignored(src, "spec.parentRefs", ROUTE_IGNORED)
            return hostnames, []
        hosts: list[str] = []
        ports: list[int] = []
        anywhere = False
        for ln in self._parents(report, src):
            got = [h for h in (intersect(r, ln.hostname) for r in hostnames) if h]
            if not hostnames:
                got = [ln.hostname] if ln.hostname else []
                anywhere = anywhere or ln.hostname is None
            elif not got:
                continue
            hosts.extend(h for h in got if h not in hosts)
            ports.append(ln.port)
        if not ports:
            report.note(src, "spec.hostnames", "intersect no listener it names: the Gateway "
                        "does not attach it, its rules route nothing")  # fmt: skip
            return None
        names = [f"http-{p}" for p in sorted(set(ports))]
        return ([] if anywhere else hosts), (names if len(self.config()) > 1 else [])

    def _parents(self, report: Report, src: Source) -> list[Listener]:
        out = []
        for i, ref in enumerate(as_list(src.spec.get("parentRefs"))):
            ref = as_dict(ref)
            check_keys(report, src, ref, f"spec.parentRefs[{i}]",
                       {"name", "namespace", "sectionName", "port", "group", "kind"})  # fmt: skip
            key = f"{ref.get('namespace') or src.namespace or 'default'}/{ref.get('name')}"
            found = [
                ln
                for ln in self.listeners
                if ln.gateway == key
                and ref.get("sectionName") in (None, ln.name)
                and ref.get("port") in (None, ln.port)
            ]
            if not found:
                report.note(src, f"spec.parentRefs[{i}]", f"{key}: no such Gateway listener "
                            "among the files")  # fmt: skip
            out.extend(found)
        return out
