"""Gateway API HTTPRoute filters and backendRefs -> our route keys.

Rules kept here (the HTTPRoute spec's):
- RequestHeaderModifier / ResponseHeaderModifier -> `headers.request` / `headers.response`;
  several filters of one rule add up, never replace each other;
- URLRewrite -> `rewrite` (`hostname` -> `host`, ReplaceFullPath -> `path`,
  ReplacePrefixMatch -> `prefix`), kept beside the header modifiers of the same rule;
- RequestRedirect -> `redirect` (`hostname` -> `host`, `statusCode` default 302);
- every RequestMirror -> one entry of the `mirror` list (`percent`, or `fraction`);
- a backendRef of a kind other than Service is invalid: Gateway API answers 500 for it, so a
  rule whose refs are all invalid (or that has none) becomes `direct_response: {status: 500}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    number,
    to_num,
)

FILTERS = {
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "URLRewrite",
    "RequestRedirect",
}
REFUSED: Table = {
    "spec.rules[].filters[].type.ExtensionRef": "implementation-specific filters",
    "spec.rules[].filters[].type.CORS": "CORS answers",
    "spec.rules[].backendRefs[].filters[].type.RequestMirror": "mirrors are per rule here",
    "spec.rules[].backendRefs[].filters[].type.RequestRedirect": "a redirect is a rule's answer",
    "spec.rules[].backendRefs[].filters[].type.URLRewrite": "rewrites are per rule here",
}
IGNORED: Table = {
    "spec.rules[].backendRefs[].port": "the Service port; addresses come from --endpoints",
    "spec.rules[].backendRefs[].group": "the API group of the Service kind",
    "spec.rules[].filters[].requestMirror.backendRef.port": "the Service port; addresses come "
    "from --endpoints",
}


@dataclass
class Rule:
    """What one rule's filters and backends translate to, shared by each of its matches."""

    route: list[Doc] = field(default_factory=list)
    headers: Doc = field(default_factory=dict)
    mirrors: list[Doc] = field(default_factory=list)
    rewrite: Doc = field(default_factory=dict)
    redirect: Doc | None = None
    direct: Doc | None = None
    timeout: str | None = None


def _header_filter(report: Report, src: Source, f: Any, path: str, into: Doc) -> None:
    """Merge one header modifier into `into` (one direction of a HeaderPolicy doc)."""
    f = as_dict(f)
    check_keys(report, src, f, path, {"set", "add", "remove"})
    for op in ("set", "add"):
        for h in as_list(f.get(op)):
            into.setdefault(op, {})[str(as_dict(h).get("name")).lower()] = str(h.get("value"))
    for n in as_list(f.get("remove")):
        into.setdefault("remove", []).append(str(n).lower())


def apply_filters(
    report: Report, src: Source, filters: Any, path: str, rule: Rule, on_backend: bool
) -> None:
    """Every filter of a rule (or of one backendRef: headers only) into `rule`."""
    for i, f in enumerate(as_list(filters)):
        fpath, ftype = f"{path}[{i}]", str(as_dict(f).get("type"))
        check_keys(report, src, f, fpath, {"type", _camel(ftype)})
        body = as_dict(f).get(_camel(ftype))
        if ftype not in FILTERS or (on_backend and "Header" not in ftype):
            report.unsupported(src, f"{fpath}.type.{ftype}", REFUSED)
        elif ftype == "RequestHeaderModifier":
            _header_filter(report, src, body, f"{fpath}.requestHeaderModifier",
                           rule.headers.setdefault("request", {}))  # fmt: skip
        elif ftype == "ResponseHeaderModifier":
            _header_filter(report, src, body, f"{fpath}.responseHeaderModifier",
                           rule.headers.setdefault("response", {}))  # fmt: skip
        elif ftype == "RequestMirror":
            rule.mirrors.append(_mirror(report, src, body, f"{fpath}.requestMirror"))
        elif ftype == "URLRewrite":
            rule.rewrite.update(_rewrite(report, src, body, f"{fpath}.urlRewrite"))
        else:
            rule.redirect = _redirect(report, src, body, f"{fpath}.requestRedirect")


def _camel(ftype: str) -> str:
    """The field a filter's settings sit in: `RequestMirror` -> `requestMirror`."""
    special = {"URLRewrite": "urlRewrite", "CORS": "cors"}
    return special.get(ftype) or (ftype[:1].lower() + ftype[1:])


def _path_modifier(report: Report, src: Source, p: Any, path: str) -> Doc:
    p = as_dict(p)
    kind = str(p.get("type"))
    keys = {"ReplaceFullPath": "replaceFullPath", "ReplacePrefixMatch": "replacePrefixMatch"}
    check_keys(report, src, p, path, {"type", keys.get(kind, "type")})
    if kind not in keys:
        report.add(src, f"{path}.type", f"{kind}: unknown path modifier")
        return {}
    value = str(p.get(keys[kind], "/"))
    return {"path": value} if kind == "ReplaceFullPath" else {"prefix": value}


def _rewrite(report: Report, src: Source, rw: Any, path: str) -> Doc:
    rw = as_dict(rw)
    check_keys(report, src, rw, path, {"hostname", "path"})
    out: Doc = {}
    if rw.get("hostname"):
        out["host"] = str(rw["hostname"])
    if rw.get("path"):
        out.update(_path_modifier(report, src, rw["path"], f"{path}.path"))
    return out


def _redirect(report: Report, src: Source, rd: Any, path: str) -> Doc:
    rd = as_dict(rd)
    check_keys(report, src, rd, path, {"scheme", "hostname", "port", "path", "statusCode"})
    out: Doc = {}
    if rd.get("scheme"):
        out["scheme"] = str(rd["scheme"]).lower()
    if rd.get("hostname"):
        out["host"] = str(rd["hostname"])
    if rd.get("port"):
        out["port"] = to_num(report, src, rd["port"], f"{path}.port", integer=True)
    if rd.get("path"):
        out.update(_path_modifier(report, src, rd["path"], f"{path}.path"))
    out["status"] = to_num(report, src, rd.get("statusCode", 302), f"{path}.statusCode", True)
    return out


def _mirror(report: Report, src: Source, m: Any, path: str) -> Doc:
    m = as_dict(m)
    check_keys(report, src, m, path, {"backendRef", "percent", "fraction"})
    ref = as_dict(m.get("backendRef"))
    check_keys(report, src, ref, f"{path}.backendRef", {"name", "namespace"}, IGNORED)
    percent = to_num(report, src, m.get("percent", 100), f"{path}.percent") or 0
    if isinstance(m.get("fraction"), dict):
        frac = m["fraction"]
        top = to_num(report, src, frac.get("numerator", 0), f"{path}.fraction.numerator") or 0
        bottom = to_num(report, src, frac.get("denominator", 100), f"{path}.fraction.denominator")
        percent = 100.0 * top / bottom if bottom else 0
    return {"destination": backend_name(ref, src), "percent": number(percent)}


def backend_name(ref: Doc, src: Source) -> str:
    """A Service in the route's own namespace is its name; one elsewhere `name.namespace`."""
    name, ns = str(ref.get("name")), ref.get("namespace")
    return f"{name}.{ns}" if ns and ns != (src.namespace or ns) else name


def backends(report: Report, src: Source, refs: Any, path: str) -> tuple[list[Doc], int]:
    """The valid backendRefs as destinations, and how many were invalid."""
    out, invalid = [], 0
    for i, ref in enumerate(as_list(refs)):
        bpath, ref = f"{path}[{i}]", as_dict(ref)
        known = {"name", "weight", "kind", "namespace", "filters"}
        check_keys(report, src, ref, bpath, known, IGNORED)
        if ref.get("kind", "Service") != "Service":
            invalid += 1
            report.note(src, f"{bpath}.kind", f"{ref.get('kind')}: not a Service: an invalid "
                        "backendRef (Gateway API answers 500 in its place)")  # fmt: skip
            continue
        weight = to_num(report, src, ref.get("weight", 1), f"{bpath}.weight")
        dest: Doc = {"destination": backend_name(ref, src), "weight": weight}
        own = Rule()
        apply_filters(report, src, ref.get("filters"), f"{bpath}.filters", own, on_backend=True)
        if own.headers:
            dest["headers"] = own.headers
        out.append(dest)
    return out, invalid
