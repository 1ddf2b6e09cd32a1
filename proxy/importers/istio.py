"""Istio VirtualService + DestinationRule -> routes and upstreams.

Istio evaluates `http[]` first-match-wins, exactly as our `routes:`, so each http route keeps
its position. `spec.hosts` become route `hosts` as written (a short name like `reviews`
stays `reviews`; `*` means any host), and each host is its own virtual host: requests for it
never fall through to another VirtualService's routes (see vhosts). Upstreams are named per
service, `reviews-v1` (short host + subset), so two services' `v1` never merge; the bare
subset name is accepted by `--endpoints` while only one service is imported.
"""

from __future__ import annotations

from typing import Any

from proxy.importers import istio_actions
from proxy.importers.bind import Wanted, bind
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
    unique_name,
)
from proxy.importers.destination_rule import Subsets, short_host
from proxy.importers.istio_match import REFUSED as MATCH_REFUSED
from proxy.importers.istio_match import (
    convert_fault,
    convert_header_ops,
    convert_match,
    convert_matches,
    convert_retries,
)
from proxy.importers.vhosts import isolate

KINDS = ("VirtualService", "DestinationRule")
_DEST_PATHS = ("route[].destination", "mirror", "mirrors[].destination")
IGNORED: Table = {
    "spec.gateways": "which Envoys serve the routes (sidecars, ingress gateways); "
    "here the proxy's own listener serves them",
    "spec.exportTo": "Istio config visibility across namespaces",
    **{
        f"spec.http[].{p}.port": "the Service port; addresses come from --endpoints"
        for p in _DEST_PATHS
    },
}
REFUSED: Table = {
    "spec.tcp": "TCP routes (canaryproxy is an HTTP proxy)",
    "spec.tls": "TLS passthrough routes (canaryproxy terminates HTTP)",
    "spec.http[].delegate": "delegate VirtualServices: put the routes in one",
    "spec.http[].corsPolicy": "CORS answers",
    **MATCH_REFUSED,
}
_HTTP_KEYS = {
    "name",
    "match",
    "route",
    "redirect",
    "rewrite",
    "directResponse",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "fault",
    "retries",
    "timeout",
    "headers",
}
_FORWARD_ONLY = ("rewrite", "mirror", "mirrors", "retries")


class _Refs:
    """Upstreams the routes reference: {name: (service, subset or None, where)}."""

    def __init__(self) -> None:
        self.used: dict[str, tuple[str, str | None, Source, str]] = {}

    def upstream(self, src: Source, dest: Any, path: str, default_host: str) -> str:
        dest = as_dict(dest)
        host = short_host(str(dest.get("host") or default_host))
        subset = str(dest["subset"]) if dest.get("subset") else None
        name = (f"{host}-{subset}" if host else subset) if subset else host
        self.used.setdefault(name, (host, subset, src, path))
        return name

    def services(self) -> set[str]:
        return {host for host, _, _, _ in self.used.values()}


def _hosts(report: Report, src: Source) -> list[str]:
    """`spec.hosts` as route hosts (`*` = any host, i.e. none)."""
    hosts = [str(h) for h in as_list(src.spec.get("hosts"))]
    if "*" in hosts:
        return []
    for i, host in enumerate(hosts):
        if "." not in host:
            report.note(src, f"spec.hosts[{i}]", f"{host}: kept as written: only requests with "
                        f"`Host: {host}` match (Istio also answers its cluster FQDN; add it if "
                        "clients use it)")  # fmt: skip
        elif host.endswith(".svc.cluster.local"):
            report.note(src, f"spec.hosts[{i}]", f"{host}: kept as written: requests with "
                        "the short name do not match it")  # fmt: skip
    return hosts


class _VS:
    """One VirtualService being translated."""

    def __init__(self, report: Report, src: Source, refs: _Refs, taken: set[str]) -> None:
        self.report, self.src, self.refs, self.taken = report, src, refs, taken
        self.hosts = _hosts(report, src)
        first = next(iter(as_list(src.spec.get("hosts"))), "")
        self.default_host = str(first) if first != "*" else ""
        self.service = short_host(self.default_host)

    def upstream(self, dest: Any, path: str) -> str:
        """The upstream a Destination names (its fields checked at `path`)."""
        check_keys(self.report, self.src, dest, path, {"host", "subset"}, IGNORED)
        return self.refs.upstream(self.src, dest, path, self.default_host)

    def routes(self) -> list[Doc]:
        spec = self.src.spec
        check_keys(self.report, self.src, spec, "spec", {"hosts", "http"}, IGNORED, REFUSED)
        check_metadata(self.report, self.src)
        owner = self.src.name or _stem(self.src.file)
        out: list[Doc] = []
        for i, h in enumerate(as_list(spec.get("http"))):
            base = str(as_dict(h).get("name") or f"{owner}-{i}")
            out.extend(self._http(as_dict(h), f"spec.http[{i}]", base, owner))
        if not spec.get("http"):
            self.report.add(self.src, "spec.http", "no http routes")
        return out

    def _http(self, h: Doc, path: str, base: str, owner: str) -> list[Doc]:
        """One http[] entry -> one route (one per match item with a `rewrite.uri`)."""
        report, src = self.report, self.src
        check_keys(report, src, h, path, _HTTP_KEYS, IGNORED, REFUSED)
        matches = convert_matches(report, src, h.get("match"), f"{path}.match")
        route = self._action(h, path)
        if matches is None or route is None:
            return []  # every match refused, or no action: nothing safe to route
        self._options(h, path, route)
        groups = [[m] for m in matches] if istio_actions.has_uri_rewrite(h) else [matches]
        rewrite = None
        if "route" in route and "rewrite" in h:
            rewrite = istio_actions.rewrite_for(report, src, h["rewrite"], f"{path}.rewrite")
        out: list[Doc] = []
        for n, group in enumerate(groups or [[]]):
            one: Doc = {"name": unique_name(base if n == 0 else f"{base}-{n}", owner, self.taken)}
            if self.hosts:
                one["hosts"] = list(self.hosts)
            if self.service and self.service != one["name"]:
                one["service"] = self.service
            if group:
                one["match"] = group
            one.update(route)
            if rewrite is not None:
                one["rewrite"] = rewrite(group[0] if group else None)
            out.append(one)
        return out

    def _action(self, h: Doc, path: str) -> Doc | None:
        """`route:`, `redirect:` or `direct_response:` (exactly one), with its mirrors."""
        report, src = self.report, self.src
        given = [k for k in ("route", "redirect", "directResponse") if h.get(k)]
        if len(given) != 1:
            what = " and ".join(given) if given else "no route, redirect or directResponse"
            report.add(src, path, f"{what}: needs exactly one")
            return None
        if given[0] == "redirect":
            rd = istio_actions.redirect(report, src, h["redirect"], f"{path}.redirect")
            return self._answers(h, path, {"redirect": rd} if rd else None)
        if given[0] == "directResponse":
            dr = istio_actions.direct_response(
                report, src, h["directResponse"], f"{path}.directResponse"
            )
            return self._answers(h, path, {"direct_response": dr} if dr else None)
        dests = [self._destination(d, f"{path}.route[{i}]") for i, d in enumerate(h["route"])]
        out: Doc = {"route": _istio_weights([d for d in dests if d])}
        mirrors = istio_actions.mirrors(report, src, h, path, self.upstream)
        if mirrors:
            out["mirror"] = mirrors if len(mirrors) > 1 else mirrors[0]
        return out if out["route"] else None

    def _answers(self, h: Doc, path: str, action: Doc | None) -> Doc | None:
        for key in _FORWARD_ONLY:
            if key in h:
                self.report.add(self.src, f"{path}.{key}", "applies to forwarded requests only")
        return action

    def _destination(self, d: Any, path: str) -> Doc | None:
        report, src = self.report, self.src
        if not isinstance(d, dict) or not isinstance(d.get("destination"), dict):
            report.add(src, path, "expected a destination")
            return None
        check_keys(report, src, d, path, {"destination", "weight", "headers"})
        out: Doc = {"destination": self.upstream(d["destination"], f"{path}.destination")}
        if "weight" in d:
            weight = to_num(report, src, d["weight"], f"{path}.weight")
            if weight is None:
                return None
            out["weight"] = weight
        if d.get("headers"):
            out["headers"] = convert_header_ops(report, src, d["headers"], f"{path}.headers")
        return out

    def _options(self, h: Doc, path: str, route: Doc) -> None:
        report, src = self.report, self.src
        if "timeout" in h:
            timeout = duration(report, src, h["timeout"], f"{path}.timeout")
            if timeout and timeout != "0s":  # 0s: Istio's "no timeout", keep our default
                route["timeout"] = timeout
        if "retries" in h and "route" in route:
            retries = convert_retries(report, src, h["retries"], f"{path}.retries")
            if retries:
                route["retries"] = retries
        if "fault" in h:
            fault = convert_fault(report, src, h["fault"], f"{path}.fault")
            if fault:
                route["fault"] = fault
        if h.get("headers"):
            route["headers"] = convert_header_ops(report, src, h["headers"], f"{path}.headers")


def _istio_weights(dests: list[Doc]) -> list[Doc]:
    """Istio: a lone destination takes 100 %; among several, a missing weight means 0."""
    if len(dests) > 1 and any("weight" in d for d in dests):
        for d in dests:
            d.setdefault("weight", 0)
    return dests


def _stem(file: str) -> str:
    base = file.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] or "virtualservice"


def as_virtual_service(report: Report, src: Source) -> Source:
    """A document without `kind` whose `spec.http` is a list reads as a VirtualService (the
    shape articles print: only `spec: {http: [...]}`); said in a note."""
    if not src.kind and isinstance(src.spec.get("http"), list):
        meta = {"name": _stem(src.file), **as_dict(src.doc.get("metadata"))}
        src = Source(src.file, {**src.doc, "kind": "VirtualService", "metadata": meta})
        report.note(src, "kind", "not given: read as a VirtualService (it has spec.http)")
    return src


def translate(
    sources: list[Source], endpoints: dict[str, list[str]], report: Report
) -> tuple[list[Doc], dict[str, Doc]]:
    """VirtualServices -> routes (in file order), DestinationRules -> upstream options."""
    subsets, refs, taken = Subsets(), _Refs(), set[str]()
    for src in sources:
        if src.kind == "DestinationRule":
            subsets.add(report, src)
    routes: list[Doc] = []
    for src in sources:
        if src.kind == "VirtualService":
            routes.extend(_VS(report, src, refs, taken).routes())
    used = {d["destination"] for r in routes for d in _targets(r)}
    wanted = [w for w in _wanted(refs, subsets, endpoints) if w.name in used]
    return isolate(routes, taken), bind(wanted, endpoints, report)


def _targets(route: Doc) -> list[Doc]:
    """The destinations and mirrors of a route (a refused route's never count)."""
    mirror = route.get("mirror")
    mirrors = mirror if isinstance(mirror, list) else [mirror] if mirror else []
    return [*route.get("route", []), *mirrors]


def _wanted(refs: _Refs, subsets: Subsets, endpoints: dict[str, list[str]]) -> list[Wanted]:
    """Each referenced upstream, with the bare subset as an alias while one service is
    imported. A subset needs a DestinationRule only when --endpoints does not name it."""
    one_service = len(refs.services()) <= 1
    out = []
    for name, (host, subset, src, path) in refs.used.items():
        aliases = (subset,) if subset and one_service and subset != name else ()
        defined = subset is None or subset in subsets.by_host.get(host, {})
        named = any(k in endpoints for k in (name, *aliases))
        hint = f"pass --endpoints {name}=HOST:PORT"
        if not defined and not named:
            hint = f"no DestinationRule for host {host} defines subset {subset}; {hint}"
        elif subset and not one_service:
            hint += f" (a bare `{subset}` is ambiguous: {len(refs.services())} services)"
        opts = dict(subsets.host_options.get(host, {}))
        opts.update(subsets.by_host.get(host, {}).get(subset or "", {}))
        out.append(Wanted(name, src, path, aliases, opts, hint=hint))
    return out


__all__ = ["KINDS", "IGNORED", "REFUSED", "translate", "convert_match", "as_virtual_service"]
