"""Gateway API HTTPRoute -> routes and upstreams.

Gateway API does not evaluate rules in order: among all matches the most specific wins
(exact path > longest prefix > method > most headers > most query params; ties keep the
manifest order). We are first-match-wins, so each match becomes its own route and the
routes are sorted by that precedence: the translated table means what the manifest meant.
RegularExpression paths are implementation-specific; like Envoy Gateway we rank them after
Exact and before PathPrefix.
"""

from __future__ import annotations

from typing import Any

from proxy.importers.common import (
    Doc,
    Errors,
    Source,
    check_keys,
    duration_text,
    go_duration,
    unique_name,
)
from proxy.importers.common import number as num

KINDS = ("HTTPRoute",)
_PATH_TYPES = {"Exact": "exact", "PathPrefix": "prefix", "RegularExpression": "regex"}
_VALUE_TYPES = {"Exact": "exact", "RegularExpression": "regex"}
_RULE_KEYS = {"name", "matches", "filters", "backendRefs", "timeouts"}
_FILTERS = {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "URLRewrite"}


def _path(errors: Errors, src: Source, p: Any, path: str) -> Doc | None:
    p = p if isinstance(p, dict) else {}
    check_keys(errors, src, p, path, {"type", "value"})
    kind = _PATH_TYPES.get(str(p.get("type", "PathPrefix")))
    if kind is None:
        errors.add(src, f"{path}.type", f"{p.get('type')}: unknown path match type")
        return None
    value = str(p.get("value", "/"))
    if kind == "prefix":
        if value.rstrip("/") == "":
            return None  # `/` matches everything: no predicate at all
        # Gateway API prefixes match whole path elements: /api matches /api and /api/x,
        # never /apix. A full-match regex says exactly that.
        return {"regex": _escape(value.rstrip("/")) + "(/.*)?"}
    return {kind: value}


def _escape(text: str) -> str:
    """RE2-safe literal (re.escape also escapes '/' and '-', which RE2 accepts too)."""
    out = []
    for ch in text:
        out.append("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch)
    return "".join(out)


def _values(errors: Errors, src: Source, items: Any, path: str, lower: bool) -> Doc:
    out: Doc = {}
    for i, item in enumerate(items or []):
        ipath = f"{path}[{i}]"
        check_keys(errors, src, item, ipath, {"type", "name", "value"})
        kind = _VALUE_TYPES.get(str(item.get("type", "Exact")))
        if kind is None:
            errors.add(src, f"{ipath}.type", f"{item.get('type')}: not supported")
            continue
        name = str(item.get("name", ""))
        out[name.lower() if lower else name] = {kind: str(item.get("value", ""))}
    return out


def convert_match(errors: Errors, src: Source, m: Any, path: str) -> Doc:
    """One HTTPRouteMatch -> one item of our `match:` list."""
    m = m if isinstance(m, dict) else {}
    check_keys(errors, src, m, path, {"path", "headers", "queryParams", "method"})
    out: Doc = {}
    p = _path(errors, src, m.get("path"), f"{path}.path")
    if p:
        out["path"] = p
    if m.get("method"):
        out["method"] = [str(m["method"]).upper()]
    headers = _values(errors, src, m.get("headers"), f"{path}.headers", lower=True)
    if headers:
        out["headers"] = headers
    query = _values(errors, src, m.get("queryParams"), f"{path}.queryParams", lower=False)
    if query:
        out["query"] = query
    return out


def precedence(m: Doc, order: tuple[int, ...]) -> tuple[Any, ...]:
    """Sort key of one HTTPRouteMatch, most specific first (GEP: HTTPRoute rule precedence)."""
    p = m.get("path") or {"type": "PathPrefix", "value": "/"}
    ptype, value = str(p.get("type", "PathPrefix")), str(p.get("value", "/"))
    rank = {"Exact": 0, "RegularExpression": 1}.get(ptype, 2)
    length = len(value.rstrip("/")) if ptype == "PathPrefix" else len(value)
    return (
        rank,
        -length,
        0 if m.get("method") else 1,
        -len(m.get("headers") or []),
        -len(m.get("queryParams") or []),
        order,
    )


def _header_filter(errors: Errors, src: Source, f: Any, path: str) -> Doc:
    f = f if isinstance(f, dict) else {}
    check_keys(errors, src, f, path, {"set", "add", "remove"})
    out: Doc = {}
    for op in ("set", "add"):
        if f.get(op):
            out[op] = {str(h["name"]).lower(): str(h["value"]) for h in f[op]}
    if f.get("remove"):
        out["remove"] = [str(n).lower() for n in f["remove"]]
    return out


class _Rule:
    """What one rule's filters and backends translate to, shared by each of its matches."""

    def __init__(self) -> None:
        self.route: list[Doc] = []
        self.headers: Doc = {}
        self.mirror: Doc | None = None
        self.timeout: str | None = None


def _filters(errors: Errors, src: Source, filters: Any, path: str, into: Doc) -> Doc | None:
    """Apply header modifiers to `into` (a HeaderPolicy doc); return a mirror if any."""
    mirror = None
    for i, f in enumerate(filters or []):
        fpath, ftype = f"{path}[{i}]", str(f.get("type"))
        if ftype not in _FILTERS:
            errors.add(src, f"{fpath}.type", f"{ftype}: not supported")
        elif ftype == "RequestHeaderModifier":
            into["request"] = _header_filter(
                errors, src, f.get("requestHeaderModifier"), f"{fpath}.requestHeaderModifier"
            )
        elif ftype == "ResponseHeaderModifier":
            into["response"] = _header_filter(
                errors, src, f.get("responseHeaderModifier"), f"{fpath}.responseHeaderModifier"
            )
        elif ftype == "RequestMirror":
            mirror = _mirror(errors, src, f.get("requestMirror"), f"{fpath}.requestMirror")
        else:
            _rewrite(errors, src, f.get("urlRewrite"), f"{fpath}.urlRewrite", into)
    return mirror


def _rewrite(errors: Errors, src: Source, rw: Any, path: str, into: Doc) -> None:
    """URLRewrite: a hostname rewrite is a Host header set; path rewrites have no equivalent."""
    rw = rw if isinstance(rw, dict) else {}
    check_keys(errors, src, rw, path, {"hostname"})
    if rw.get("hostname"):
        request = into.setdefault("request", {})
        request.setdefault("set", {})["host"] = str(rw["hostname"])


def _mirror(errors: Errors, src: Source, m: Any, path: str) -> Doc | None:
    m = m if isinstance(m, dict) else {}
    check_keys(errors, src, m, path, {"backendRef", "percent", "fraction"})
    ref = m.get("backendRef") or {}
    percent = float(m.get("percent", 100))
    if isinstance(m.get("fraction"), dict):
        frac = m["fraction"]
        percent = 100.0 * float(frac.get("numerator", 0)) / float(frac.get("denominator", 100))
    return {"destination": str(ref.get("name")), "percent": num(percent)}


def _backends(errors: Errors, src: Source, refs: Any, path: str) -> list[Doc]:
    out = []
    for i, ref in enumerate(refs or []):
        bpath = f"{path}[{i}]"
        check_keys(
            errors,
            src,
            ref,
            bpath,
            {"name", "port", "weight", "kind", "group", "namespace", "filters"},
        )
        if ref.get("kind", "Service") != "Service":
            errors.add(
                src, f"{bpath}.kind", f"{ref.get('kind')}: only Service backends are supported"
            )
        dest: Doc = {
            "destination": str(ref.get("name")),
            "weight": num(float(ref.get("weight", 1))),
        }
        headers: Doc = {}
        if _filters(errors, src, ref.get("filters"), f"{bpath}.filters", headers):
            errors.add(src, f"{bpath}.filters", "RequestMirror on a backendRef is not supported")
        if headers:
            dest["headers"] = headers
        out.append(dest)
    return out


def _rule(errors: Errors, src: Source, rule: Doc, path: str) -> _Rule:
    check_keys(errors, src, rule, path, _RULE_KEYS)
    out = _Rule()
    out.route = _backends(errors, src, rule.get("backendRefs"), f"{path}.backendRefs")
    if not out.route:
        errors.add(
            src, f"{path}.backendRefs", "no backend (Gateway API answers 500): not supported"
        )
    out.mirror = _filters(errors, src, rule.get("filters"), f"{path}.filters", out.headers)
    timeouts = rule.get("timeouts") or {}
    check_keys(errors, src, timeouts, f"{path}.timeouts", {"request", "backendRequest"})
    value = timeouts.get("request", timeouts.get("backendRequest"))
    if value is not None:
        seconds = go_duration(value)
        if seconds is None:
            errors.add(src, f"{path}.timeouts", f"{value!r}: not a duration")
        elif seconds > 0:  # 0 means "no timeout" in Gateway API: keep our default
            out.timeout = duration_text(seconds)
    return out


def _route(name: str, service: str, match: Doc, rule: _Rule) -> Doc:
    route: Doc = {"name": name, "service": service}
    if match:
        route["match"] = [match]
    route["route"] = rule.route
    if rule.mirror:
        route["mirror"] = rule.mirror
    if rule.timeout:
        route["timeout"] = rule.timeout
    if rule.headers:
        route["headers"] = rule.headers
    return route


def translate(sources: list[Source], errors: Errors) -> list[Doc]:
    """All HTTPRoutes -> routes in Gateway API precedence order."""
    keyed: list[tuple[tuple[Any, ...], Doc]] = []
    taken: set[str] = set()
    for doc_index, src in enumerate(s for s in sources if s.kind == "HTTPRoute"):
        check_keys(errors, src, src.spec, "spec", {"parentRefs", "hostnames", "rules"})
        for r, rule in enumerate(src.spec.get("rules") or []):
            path = f"spec.rules[{r}]"
            conv = _rule(errors, src, rule, path)
            matches = rule.get("matches") or [{}]
            for m_i, m in enumerate(matches):
                match = convert_match(errors, src, m, f"{path}.matches[{m_i}]")
                base = str(rule.get("name") or f"{src.name}-{r}")
                name = unique_name(base if len(matches) == 1 else f"{base}-{m_i}", src.name, taken)
                key = precedence(m, (doc_index, r, m_i))
                keyed.append((key, _route(name, src.name, match, conv)))
    keyed.sort(key=lambda kv: kv[0])
    return [route for _, route in keyed]


def backend_names(routes: list[Doc]) -> list[str]:
    """Every Service the routes send to or mirror to, once each, in order."""
    names: list[str] = []
    for route in routes:
        dests = [d["destination"] for d in route["route"]]
        if route.get("mirror"):
            dests.append(route["mirror"]["destination"])
        names.extend(d for d in dests if d not in names)
    return names
