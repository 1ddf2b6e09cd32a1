"""What an Istio http route does besides forwarding: redirect, rewrite, directResponse, mirrors.

Rules kept here (Istio's, as Envoy applies them):
- `redirect.redirectCode` defaults to 301; `uri` replaces the whole path; `authority` the host;
  `derivePort: FROM_PROTOCOL_DEFAULT` is the scheme's port, `FROM_REQUEST_PORT` the request's;
- `rewrite.uri` replaces the prefix the route matched, literally (Envoy's prefix_rewrite:
  `/api/` -> `/v2` sends `/api/x` as `/v2x`); an exact or regex path match is replaced whole;
  a route without a uri match matched the prefix `/`. Each match item of a route with a
  `rewrite.uri` becomes its own route, as Istio gives each its own Envoy route;
- `rewrite.uriRegexRewrite` is Envoy's regex_rewrite, which is ours;
- `mirror` + `mirrorPercentage` (100 when unset) and `mirrors[]` become a mirror list.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    as_dict,
    check_keys,
    number,
    re2_escape,
    sub_literal,
    to_num,
)
from proxy.importers.istio_match import percent

_CODES = (301, 302, 303, 307, 308)
_DEFAULT_PORT = {"http": 80, "https": 443}


def redirect(report: Report, src: Source, rd: Any, path: str) -> Doc | None:
    """HTTPRedirect -> our redirect; None when a part is refused."""
    rd = as_dict(rd)
    mark = report.mark()
    keys = {"uri", "authority", "port", "derivePort", "scheme", "redirectCode"}
    check_keys(report, src, rd, path, keys)
    out: Doc = {}
    if rd.get("scheme"):
        out["scheme"] = str(rd["scheme"]).lower()
    if rd.get("authority"):
        host, _, port = str(rd["authority"]).partition(":")
        out["host"] = host
        if port.isdigit():
            out["port"] = int(port)
    if rd.get("port"):
        out["port"] = to_num(report, src, rd["port"], f"{path}.port", integer=True)
    _derive_port(report, src, rd, path, out)
    if rd.get("uri"):
        out["path"] = str(rd["uri"])
    code = to_num(report, src, rd.get("redirectCode", 301), f"{path}.redirectCode", True)
    if code is not None and code not in _CODES:  # Istio's default 301 is written out
        report.add(src, f"{path}.redirectCode", f"{code}: not supported (301, 302, 303, 307, 308)")
    out["status"] = code
    return None if report.since(mark) else out


def _derive_port(report: Report, src: Source, rd: Doc, path: str, out: Doc) -> None:
    derive = rd.get("derivePort")
    if derive is None or derive == "FROM_REQUEST_PORT":
        return  # keeping the request's port is our default when no scheme is set
    if derive != "FROM_PROTOCOL_DEFAULT":
        report.add(src, f"{path}.derivePort", f"{derive}: unknown value")
    elif "scheme" in out:
        out["port"] = _DEFAULT_PORT.get(out["scheme"], 80)
    else:
        report.add(src, f"{path}.derivePort", "FROM_PROTOCOL_DEFAULT without scheme: not supported")


def direct_response(report: Report, src: Source, dr: Any, path: str) -> Doc | None:
    dr = as_dict(dr)
    mark = report.mark()
    check_keys(report, src, dr, path, {"status", "body"})
    out: Doc = {"status": to_num(report, src, dr.get("status", 200), f"{path}.status", True)}
    body = as_dict(dr.get("body"))
    check_keys(report, src, body, f"{path}.body", {"string", "bytes"})
    if "string" in body:
        out["body"] = str(body["string"])
    elif "bytes" in body:
        try:
            out["body"] = base64.b64decode(str(body["bytes"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            report.add(src, f"{path}.body.bytes", "not base64 of UTF-8 text: not supported")
    return None if report.since(mark) else out


def rewrite_for(
    report: Report, src: Source, rw: Any, path: str
) -> Callable[[Doc | None], Doc] | None:
    """HTTPRewrite -> a function of one match item giving our rewrite; None if refused."""
    rw = as_dict(rw)
    mark = report.mark()
    check_keys(report, src, rw, path, {"uri", "authority", "uriRegexRewrite"})
    base: Doc = {}
    if rw.get("authority"):
        if ":" in str(rw["authority"]):
            report.add(src, f"{path}.authority", "a port in the rewritten authority: not supported")
        base["host"] = str(rw["authority"])
    regex = as_dict(rw.get("uriRegexRewrite"))
    check_keys(report, src, regex, f"{path}.uriRegexRewrite", {"match", "rewrite"})
    if regex and rw.get("uri"):
        report.add(src, path, "uri and uriRegexRewrite together: give one")
    elif regex:
        base["regex"] = str(regex.get("match", ""))
        base["substitution"] = str(regex.get("rewrite", ""))
    if report.since(mark) or not (base or rw.get("uri")):
        return None
    uri = str(rw["uri"]) if rw.get("uri") else None

    def for_item(item: Doc | None) -> Doc:
        if uri is None:
            return dict(base)
        p = (item or {}).get("path") or {"prefix": "/"}
        if "prefix" in p:  # Envoy's prefix_rewrite is a literal replacement of the prefix
            return {
                **base,
                "regex": "^" + re2_escape(p["prefix"]),
                "substitution": sub_literal(uri),
            }
        return {**base, "path": uri}

    return for_item


def has_uri_rewrite(h: Doc) -> bool:
    return isinstance(h.get("rewrite"), dict) and bool(h["rewrite"].get("uri"))


def mirrors(
    report: Report, src: Source, h: Doc, path: str, upstream: Callable[[Any, str], str]
) -> list[Doc] | None:
    """`mirror` (+ `mirrorPercentage`) or `mirrors[]` -> a mirror list, or None."""
    out: list[Doc] = []
    for i, m in enumerate(h.get("mirrors") or []):
        mpath = f"{path}.mirrors[{i}]"
        check_keys(report, src, m, mpath, {"destination", "percentage"})
        dest = upstream(as_dict(m).get("destination"), f"{mpath}.destination")
        out.append({"destination": dest, "percent": number(percent(m.get("percentage")))})
    if h.get("mirror"):
        dest = upstream(h["mirror"], f"{path}.mirror")
        pct = h.get("mirrorPercentage", h.get("mirrorPercent"))
        out.append({"destination": dest, "percent": number(percent(pct))})
    if h.get("mirrors") and h.get("mirror"):
        report.add(src, path, "mirror and mirrors together: give one")
        return None
    return out or None
