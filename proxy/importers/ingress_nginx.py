"""ingress-nginx: networking.k8s.io/v1 Ingress objects (main and canary) -> routes.

Rules kept here (ingress-nginx's, as its controller and balancer.lua apply them):
- each host is an nginx server (no host: the default server); a request reaches only its
  server's locations, never another host's (vhosts);
- locations of a server are tried longest path first (ties: exact first, then the path in
  reverse order), which is nginx's longest-prefix rule and ingress-nginx's regex order;
- pathType Exact -> `= P`; Prefix -> `= P` and prefix `P/` (`/foo` matches `/foo` and
  `/foo/bar`, not `/foobar`); ImplementationSpecific -> a plain nginx prefix (`/foo`
  matches `/foobar` too);
- `use-regex` or a `rewrite-target` on any Ingress of a host makes every location of that
  host a case-insensitive regex anchored at the start (`~* "^P"`);
- a canary Ingress (`canary: "true"`) joins the main location with the same host, path and
  pathType: header, then cookie, then weight decide (nginx_canary); one canary per location;
- backends are upstreams `<service>-<port>` (`--endpoints` may also name a service used with
  one port by its bare name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.importers import ingress_annotations as ia
from proxy.importers.bind import Wanted
from proxy.importers.common import (
    Doc,
    Report,
    Source,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
    unique_name,
)
from proxy.importers.nginx_canary import Rules
from proxy.importers.vhosts import isolate

KINDS = ("Ingress",)
IGNORED, REFUSED = ia.IGNORED, ia.REFUSED
WEB = "web"


@dataclass
class Location:
    host: str
    path: str
    kind: str  # Exact | Prefix | ImplementationSpecific | Root (a defaultBackend's "/")
    backend: str
    src: Source
    where: str
    opts: ia.Options
    name: str
    tls: bool = False
    canary: tuple[str, Rules] | None = None  # (canary upstream, its rules)


@dataclass
class _Build:
    report: Report
    locations: list[Location] = field(default_factory=list)
    wanted: dict[str, Wanted] = field(default_factory=dict)
    ports: dict[str, set[str]] = field(default_factory=dict)  # service -> ports used
    taken: set[str] = field(default_factory=set)

    def upstream(self, src: Source, backend: Any, where: str) -> str | None:
        svc = as_dict(as_dict(backend).get("service"))
        check_keys(self.report, src, backend, where, {"service"}, None, REFUSED)
        if not svc.get("name"):
            if "resource" not in as_dict(backend):
                self.report.add(src, where, "needs service.name")
            return None
        port = as_dict(svc.get("port"))
        check_keys(self.report, src, svc, f"{where}.service", {"name", "port"})
        check_keys(self.report, src, port, f"{where}.service.port", {"number", "name"})
        pname = str(port.get("number") or port.get("name") or "80")
        name = f"{svc['name']}-{pname}"
        self.ports.setdefault(str(svc["name"]), set()).add(pname)
        self.wanted.setdefault(name, Wanted(name, src, where))
        return name


def _ingress(b: _Build, src: Source, canaries: list[tuple[Source, ia.Options]]) -> None:
    report = b.report
    check_keys(report, src, src.spec, "spec", {"rules", "defaultBackend", "tls"}, IGNORED)
    check_metadata(report, src, frozenset({"annotations"}))
    mark = report.mark()
    opts = ia.parse(report, src)
    # a refused annotation (auth, snippets...): none of this Ingress is safe to route
    opts.refused = report.since(mark)
    if opts.redirect is not None and "host" not in opts.redirect:
        opts.redirect = None  # a redirect code without its URL does nothing in ingress-nginx
    tls_hosts = {
        str(h) for t in as_list(src.spec.get("tls")) for h in as_list(as_dict(t).get("hosts"))
    }
    for i, t in enumerate(as_list(src.spec.get("tls"))):
        check_keys(report, src, t, f"spec.tls[{i}]", {"hosts"}, IGNORED)
    if opts.canary is not None:
        canaries.append((src, opts))
        return
    hosts_seen: list[str] = []
    for r, rule in enumerate(as_list(src.spec.get("rules"))):
        rule = as_dict(rule)
        check_keys(report, src, rule, f"spec.rules[{r}]", {"host", "http"})
        check_keys(report, src, rule.get("http"), f"spec.rules[{r}].http", {"paths"})
        host = str(rule.get("host") or "")
        hosts_seen.append(host)
        for p, item in enumerate(as_list(as_dict(rule.get("http")).get("paths"))):
            loc = _location(b, src, host, as_dict(item), (r, p), opts)
            if loc:
                loc.tls = host in tls_hosts
                b.locations.append(loc)
    _default_backend(b, src, hosts_seen, opts)


def _location(
    b: _Build, src: Source, host: str, item: Doc, rp: tuple[int, int], opts: ia.Options
) -> Location | None:
    where = f"spec.rules[{rp[0]}].http.paths[{rp[1]}]"
    check_keys(b.report, src, item, where, {"path", "pathType", "backend"})
    kind = str(item.get("pathType", "ImplementationSpecific"))
    path = str(item.get("path") or "/")
    if kind not in ("Exact", "Prefix", "ImplementationSpecific"):
        b.report.add(src, f"{where}.pathType", f"{kind}: unknown pathType")
        return None
    backend = b.upstream(src, item.get("backend"), f"{where}.backend")
    if backend is None:
        return None
    name = unique_name(f"{src.name}-{rp[0]}-{rp[1]}", src.name, b.taken)
    return Location(host, path, kind, backend, src, where, opts, name)


def _default_backend(b: _Build, src: Source, hosts: list[str], opts: ia.Options) -> None:
    """`spec.defaultBackend`: the root of this Ingress's hosts that have no `/` of their own,
    and the default server when the Ingress has no rules."""
    if not src.spec.get("defaultBackend"):
        return
    backend = b.upstream(src, src.spec["defaultBackend"], "spec.defaultBackend")
    if backend is None:
        return
    for host in hosts or [""]:
        if any(loc.host == host and loc.path == "/" for loc in b.locations):
            continue
        name = unique_name(f"{src.name}-default", src.name, b.taken)
        b.locations.append(
            Location(host, "/", "Root", backend, src, "spec.defaultBackend", opts, name)
        )


def _attach(b: _Build, src: Source, opts: ia.Options) -> None:
    """A canary Ingress joins each main location with its host, path and pathType."""
    assert opts.canary is not None
    for r, rule in enumerate(as_list(src.spec.get("rules"))):
        check_keys(b.report, src, rule, f"spec.rules[{r}]", {"host", "http"})
        host = str(as_dict(rule).get("host") or "")
        for p, item in enumerate(as_list(as_dict(as_dict(rule).get("http")).get("paths"))):
            where, item = f"spec.rules[{r}].http.paths[{p}]", as_dict(item)
            check_keys(b.report, src, item, where, {"path", "pathType", "backend"})
            kind, path = (
                str(item.get("pathType", "ImplementationSpecific")),
                str(item.get("path") or "/"),
            )
            main = [
                loc for loc in b.locations if (loc.host, loc.path, loc.kind) == (host, path, kind)
            ]
            backend = b.upstream(src, item.get("backend"), f"{where}.backend")
            if backend is None:
                continue
            at = f"{host or '(any host)'} {path}"
            if not main:
                why = "no main Ingress has this host, path and pathType (ingress-nginx ignores it)"
                b.report.add(src, where, f"{at} ({kind}): {why}")
            elif main[0].canary is not None:
                why = "ingress-nginx applies one per location (the oldest)"
                b.report.add(src, where, f"a second canary for {at}: {why}")
            else:
                main[0].canary = (backend, opts.canary)
    if src.spec.get("defaultBackend"):
        b.report.add(src, "spec.defaultBackend", "a canary default backend: not supported")


def _regex_hosts(locations: list[Location]) -> set[str]:
    return {
        loc.host
        for loc in locations
        if loc.opts.regex or (loc.opts.rewrite_target not in (None, loc.path))
    }


def _items(loc: Location, regex: bool, exact_paths: set[tuple[str, str]]) -> tuple[list[Doc], str]:
    """The match items of a location and its nginx location string (for ordering)."""
    p = loc.path
    if regex:  # `~* "^P"` with P as written, for every location of the host
        return ([{}] if p == "/" else [{"path": {"regex": f"(?i)(?:{p}).*"}}]), p
    if loc.kind == "Exact":
        return [{"path": {"exact": p}}], p
    if p == "/":
        return [{}], p
    if loc.kind in ("ImplementationSpecific", "Root"):
        return [{"path": {"prefix": p}}], p
    norm = p if p.endswith("/") else p + "/"
    items = [{"path": {"prefix": norm}}]
    if not p.endswith("/") and (loc.host, p) not in exact_paths:
        items.insert(0, {"path": {"exact": p}})
    return items, norm


def _rewrite(loc: Location) -> Doc:
    """`rewrite "(?i)P" TARGET break;`: nginx replaces the whole URI, `$1` for groups."""
    target = loc.opts.rewrite_target or ""
    sub = target.replace("\\", "\\\\")
    for n in range(9, 0, -1):
        sub = sub.replace(f"${{{n}}}", f"\\{n}").replace(f"${n}", f"\\{n}")
    return {"regex": f"(?i)^(?:{loc.path}).*", "substitution": sub}


def _matched(base: Doc, items: list[Doc], action: Doc) -> Doc:
    """`base` + `match: items` (left out when they match every request) + `action`."""
    if items and items != [{}]:
        return {**base, "match": items, **action}
    return {**base, **action}


def _routes_of(b: _Build, loc: Location, items: list[Doc]) -> list[Doc]:
    """One location's routes: https redirect, canary steps, then the weighted split."""
    opts = loc.opts
    base: Doc = {"name": loc.name}
    if loc.host:
        base["hosts"] = [loc.host]
    base["service"] = loc.backend.rsplit("-", 1)[0]
    out: list[Doc] = []
    if (loc.tls and opts.ssl_redirect) or opts.force_ssl_redirect:
        https = {**base, "name": f"{loc.name}-to-https", "listeners": [WEB]}
        out.append(_matched(https, items, {"redirect": {"scheme": "https", "status": 308}}))
    if opts.redirect is not None:
        if loc.canary:
            b.report.note(loc.src, loc.where, "answers with a redirect: its canary never applies")
        return [*out, _matched(base, items, {"redirect": dict(opts.redirect)})]
    extra = dict(opts.route)
    if opts.rewrite_target not in (None, loc.path):
        extra["rewrite"] = {**extra.get("rewrite", {}), **_rewrite(loc)}
    final: list[Doc] = [{"destination": loc.backend}]
    if loc.canary:
        upstream, rules = loc.canary
        for n, (keys, to_canary) in enumerate(rules.steps()):
            step = {**base, "name": f"{loc.name}-{'canary' if to_canary else 'main'}-{n}"}
            step["match"] = [{**item, **keys} for item in items]
            out.append(
                {
                    **step,
                    "route": [{"destination": upstream if to_canary else loc.backend}],
                    **extra,
                }
            )
        main_w, canary_w = rules.split()
        final = [
            {"destination": loc.backend, "weight": main_w},
            {"destination": upstream, "weight": canary_w},
        ]
    out.append(_matched(base, items, {"route": final, **extra}))
    return out


def _ordered(locations: list[Location]) -> list[tuple[Location, list[Doc]]]:
    regex_hosts = _regex_hosts(locations)
    exact = {(loc.host, loc.path) for loc in locations if loc.kind == "Exact"}
    keyed = []
    for i, loc in enumerate(locations):
        items, nginx_path = _items(loc, loc.host in regex_hosts, exact)
        keyed.append((nginx_path, 0 if loc.kind == "Exact" else 1, i, loc, items))
    keyed.sort(key=lambda k: k[0], reverse=True)  # ingress-nginx: path descending, then
    keyed.sort(key=lambda k: (-len(k[0]), k[1]))  # stable by length, longest first
    return [(loc, items) for _, _, _, loc, items in keyed]


def translate(sources: list[Source], report: Report) -> tuple[list[Doc], list[Wanted], bool]:
    """Ingresses -> (routes, upstreams to bind, whether the plain listener `web` is named)."""
    b = _Build(report)
    canaries: list[tuple[Source, ia.Options]] = []
    for src in sources:
        if src.kind == "Ingress":
            _ingress(b, src, canaries)
    for src, opts in canaries:
        _attach(b, src, opts)
    routes: list[Doc] = []
    app_roots: dict[str, Doc] = {}
    for loc, items in _ordered(b.locations):
        if not loc.opts.refused:
            routes.extend(_routes_of(b, loc, items))
        if loc.opts.app_root and loc.host not in app_roots:
            app_roots[loc.host] = _app_root(b, loc)
    routes = [*app_roots.values(), *routes]
    wanted = []
    for w in b.wanted.values():
        svc, port = w.name.rsplit("-", 1)
        if b.ports.get(svc) == {port}:
            w.aliases = (svc,)
        wanted.append(w)
    web = any(WEB in r.get("listeners", ()) for r in routes)
    return isolate(routes, b.taken), wanted, web


def _app_root(b: _Build, loc: Location) -> Doc:
    """`app-root`: `/` of the Ingress's hosts answers 302 to it (scheme and host kept)."""
    name = f"{loc.host.replace('*', 'any') or 'default'}-app-root"
    route: Doc = {"name": unique_name(name, loc.src.name, b.taken)}
    if loc.host:
        route["hosts"] = [loc.host]
    route["match"] = [{"path": {"exact": "/"}}]
    route["redirect"] = {"path": loc.opts.app_root, "status": 302}
    return route
