"""Gateway API HTTPRoute (+ Gateway) -> routes, listeners and upstreams.

Gateway API does not evaluate rules in order: among all matches the most specific wins
(exact path > longest prefix > method > most headers > most query params; ties keep the
manifest order). We are first-match-wins, so each match becomes its own route and the
routes are sorted by that precedence: the translated table means what the manifest meant.
RegularExpression paths are implementation-specific; like Envoy Gateway we rank them after
Exact and before PathPrefix. Hostnames become route `hosts`, whose own precedence (exact,
then longer wildcards, then none) is the Gateway API's too.

PathPrefix matches whole path elements: `/foo` matches `/foo` and `/foo/bar`, never
`/foobar`. It becomes two match items, `{exact: /foo}` and `{prefix: /foo/}`, which keep
that meaning and leave the prefix visible to `rewrite.prefix` and `redirect.prefix`.
"""

from __future__ import annotations

from typing import Any

from proxy.importers import gateway_filters as gf
from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
    duration_text,
    go_duration,
    unique_name,
)
from proxy.importers.gateway_listeners import Gateways

KINDS = ("HTTPRoute", "Gateway")
_PATH_TYPES = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}
_VALUE_TYPES = {"Exact": "exact", "RegularExpression": "regex"}
_RULE_KEYS = {"name", "matches", "filters", "backendRefs", "timeouts"}
REFUSED: Table = {
    **gf.REFUSED,
    "spec.rules[].sessionPersistence": "session persistence by the gateway "
    "(a canary's sticky cookie is `sticky:`)",
    "spec.rules[].retry": "Gateway API retry codes (write `retries:` by hand)",
}
IGNORED: Table = {**gf.IGNORED}


def _path_items(report: Report, src: Source, p: Any, path: str) -> list[Doc] | None:
    """The path part of one match as match items (`[{}]`: any path); None if refused."""
    p = as_dict(p)
    check_keys(report, src, p, path, {"type", "value"})
    kind = _PATH_TYPES.get(str(p.get("type", "PathPrefix")))
    if kind is None:
        report.add(src, f"{path}.type", f"{p.get('type')}: unknown path match type")
        return None
    value = str(p.get("value", "/"))
    if kind != "prefix":
        return [{"path": {kind: value}}]
    stem = value.rstrip("/")
    if not stem:
        return [{}]  # `/` matches every path
    return [{"path": {"exact": stem}}, {"path": {"prefix": stem + "/"}}]


def _values(report: Report, src: Source, items: Any, path: str, lower: bool) -> Doc:
    out: Doc = {}
    for i, item in enumerate(as_list(items)):
        ipath, item = f"{path}[{i}]", as_dict(item)
        check_keys(report, src, item, ipath, {"type", "name", "value"})
        kind = _VALUE_TYPES.get(str(item.get("type", "Exact")))
        if kind is None:
            report.add(src, f"{ipath}.type", f"{item.get('type')}: not supported")
            continue
        name = str(item.get("name", ""))
        key = name.lower() if lower else name
        out.setdefault(key, {kind: str(item.get("value", ""))})  # the first of a name counts
    return out


def convert_match(report: Report, src: Source, m: Any, path: str) -> list[Doc] | None:
    """One HTTPRouteMatch -> the items of our `match:` list (OR; one or two); None if a part
    of it is refused."""
    m = as_dict(m)
    mark = report.mark()
    check_keys(report, src, m, path, {"path", "headers", "queryParams", "method"})
    rest: Doc = {}
    if m.get("method"):
        rest["method"] = [str(m["method"]).upper()]
    headers = _values(report, src, m.get("headers"), f"{path}.headers", lower=True)
    if headers:
        rest["headers"] = headers
    query = _values(report, src, m.get("queryParams"), f"{path}.queryParams", lower=False)
    if query:
        rest["query"] = query
    items = _path_items(report, src, m.get("path"), f"{path}.path")
    if items is None or report.since(mark):
        return None
    return [{**item, **rest} for item in items if {**item, **rest}]


def precedence(m: Doc, order: tuple[int, ...]) -> tuple[Any, ...]:
    """Sort key of one HTTPRouteMatch, most specific first (GEP: HTTPRoute rule precedence)."""
    p = as_dict(m.get("path")) or {"type": "PathPrefix", "value": "/"}
    ptype, value = str(p.get("type", "PathPrefix")), str(p.get("value", "/"))
    rank = {"Exact": 0, "RegularExpression": 1}.get(ptype, 2)
    length = len(value.rstrip("/")) if ptype == "PathPrefix" else len(value)
    return (
        rank,
        -length,
        0 if m.get("method") else 1,
        -len(as_list(m.get("headers"))),
        -len(as_list(m.get("queryParams"))),
        order,
    )


def _rule(report: Report, src: Source, rule: Doc, path: str) -> gf.Rule:
    check_keys(report, src, rule, path, _RULE_KEYS, IGNORED, REFUSED)
    out = gf.Rule()
    gf.apply_filters(report, src, rule.get("filters"), f"{path}.filters", out, on_backend=False)
    out.route, invalid = gf.backends(report, src, rule.get("backendRefs"), f"{path}.backendRefs")
    if out.redirect is not None:
        if rule.get("backendRefs") or out.rewrite or out.mirrors:
            report.add(src, path, "RequestRedirect answers the request: backendRefs, "
                       "URLRewrite and RequestMirror cannot go with it")  # fmt: skip
    elif not out.route:
        why = "all its backendRefs are invalid" if invalid else "it has no backendRefs"
        report.note(src, f"{path}.backendRefs", f"{why}: answered with 500, as Gateway API asks")
        out.direct = {"status": 500}
    elif invalid:
        report.add(src, f"{path}.backendRefs", f"{invalid} invalid of {invalid + len(out.route)}: "
                   "their share answered 500 in Gateway API: not supported")  # fmt: skip
    timeouts = as_dict(rule.get("timeouts"))
    check_keys(report, src, timeouts, f"{path}.timeouts", {"request", "backendRequest"})
    value = timeouts.get("request", timeouts.get("backendRequest"))
    if value is not None:
        seconds = go_duration(value)
        if seconds is None:
            report.add(src, f"{path}.timeouts", f"{value!r}: not a duration")
        elif seconds > 0:  # 0 means "no timeout" in Gateway API: keep our default
            out.timeout = duration_text(seconds)
    return out


def _route(name: str, src: Source, match: list[Doc], rule: gf.Rule, where: tuple) -> Doc:
    hosts, listeners = where
    route: Doc = {"name": name}
    if hosts:
        route["hosts"] = hosts
    if listeners:
        route["listeners"] = listeners
    route["service"] = src.name
    if match:
        route["match"] = match
    if rule.redirect is not None:
        route["redirect"] = rule.redirect
    elif rule.direct is not None:
        route["direct_response"] = rule.direct
    else:
        route["route"] = rule.route
        if rule.rewrite:
            route["rewrite"] = rule.rewrite
        if rule.mirrors:
            route["mirror"] = rule.mirrors if len(rule.mirrors) > 1 else rule.mirrors[0]
    if rule.timeout and rule.redirect is None and rule.direct is None:
        route["timeout"] = rule.timeout
    if rule.headers:
        route["headers"] = rule.headers
    return route


def translate(sources: list[Source], report: Report) -> tuple[list[Doc], list[Doc]]:
    """All HTTPRoutes -> (routes in Gateway API precedence order, listeners)."""
    gateways = Gateways(report, sources)
    keyed: list[tuple[tuple[Any, ...], Doc]] = []
    taken: set[str] = set()
    for doc_index, src in enumerate(s for s in sources if s.kind == "HTTPRoute"):
        check_keys(report, src, src.spec, "spec", {"parentRefs", "hostnames", "rules"})
        check_metadata(report, src)
        where = gateways.attach(report, src)
        for r, rule in enumerate(as_list(src.spec.get("rules"))):
            path, rule = f"spec.rules[{r}]", as_dict(rule)
            mark = report.mark()
            conv = _rule(report, src, rule, path)
            if report.since(mark) or where is None:
                continue  # a refused filter or backend: nothing safe to route for the rule
            matches = as_list(rule.get("matches")) or [{}]
            for m_i, m in enumerate(matches):
                match = convert_match(report, src, m, f"{path}.matches[{m_i}]")
                if match is None:
                    continue
                base = str(rule.get("name") or f"{src.name}-{r}")
                name = unique_name(base if len(matches) == 1 else f"{base}-{m_i}", src.name, taken)
                key = precedence(as_dict(m), (doc_index, r, m_i))
                keyed.append((key, _route(name, src, match, conv, where)))
    keyed.sort(key=lambda kv: kv[0])
    return [route for _, route in keyed], gateways.config() if gateways else []


def backend_names(routes: list[Doc]) -> list[str]:
    """Every Service the routes send to or mirror to, once each, in order."""
    names: list[str] = []
    for route in routes:
        dests = [d["destination"] for d in route.get("route") or []]
        mirror = route.get("mirror")
        for m in mirror if isinstance(mirror, list) else [mirror] if mirror else []:
            dests.append(m["destination"])
        names.extend(d for d in dests if d not in names)
    return names
