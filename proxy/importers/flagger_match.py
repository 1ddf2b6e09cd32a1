"""A Flagger Canary's A/B `analysis.match`, read the way its provider's router applies it.

- istio (Flagger's default): the Istio HTTPMatchRequest list as it stands;
- gatewayapi: Flagger keeps only `headers` and `queryParams` of each match (exact or regex;
  the path comes from `service.match`), as Gateway API header/query matches;
- nginx: Flagger writes ingress-nginx canary annotations (see nginx_canary): one header
  (exact -> `-value`, regex -> `-pattern`) and one cookie (`cookie: {exact: NAME}` ->
  `canary-by-cookie: NAME`, a cookie NAME set to `always`), weight 0;
- any other provider: refused (its router's matching is not modelled here).
"""

from __future__ import annotations

from typing import Any

from proxy.importers.common import Doc, Report, Source, as_dict, as_list
from proxy.importers.istio_match import convert_matches, string_match
from proxy.importers.nginx_canary import Rules

PATH = "spec.analysis.match"


def ab_match(report: Report, src: Source, provider: str, items: Any) -> list[Doc] | None:
    """The match items (OR) that reach the canary, or None when refused."""
    if provider in ("", "istio"):
        return convert_matches(report, src, items, PATH)
    if provider.startswith("gatewayapi"):
        return _gateway(report, src, items)
    if provider == "nginx":
        return _nginx(report, src, items)
    report.add(src, "spec.provider", f"{provider}: A/B matches of this provider: not supported")
    return None


def _gateway(report: Report, src: Source, items: Any) -> list[Doc] | None:
    mark = report.mark()
    for i, m in enumerate(as_list(items)):
        for key in as_dict(m):
            if key not in ("headers", "queryParams"):
                report.add(src, f"{PATH}[{i}].{key}", "Flagger's gatewayapi router drops it "
                           "(it keeps headers and queryParams): not supported")  # fmt: skip
        for kind in ("headers", "queryParams"):
            for name, sm in as_dict(as_dict(m).get(kind)).items():
                if not isinstance(sm, dict) or not ({"exact", "regex"} & set(sm)):
                    report.add(src, f"{PATH}[{i}].{kind}.{name}", "only exact or regex under "
                               "gatewayapi (Flagger drops the rest)")  # fmt: skip
    if report.since(mark):
        return None
    return convert_matches(report, src, items, PATH)


def _nginx(report: Report, src: Source, items: Any) -> list[Doc] | None:
    """One header and one cookie across all matches, as Flagger's IngressRouter reads them."""
    mark = report.mark()
    header = value = pattern = cookie = None
    for i, m in enumerate(as_list(items)):
        for key in as_dict(m):
            if key != "headers":
                report.add(src, f"{PATH}[{i}].{key}", "Flagger's nginx router reads only headers")
        for name, sm in as_dict(as_dict(m).get("headers")).items():
            hpath = f"{PATH}[{i}].headers.{name}"
            conv = string_match(report, src, sm, hpath)
            if conv is None:
                continue
            if name.lower() == "cookie":
                if "exact" not in conv:
                    report.add(src, hpath, "under nginx Flagger reads `cookie: {exact: NAME}` "
                               "(canary-by-cookie NAME) and drops any other form")  # fmt: skip
                elif cookie not in (None, conv["exact"]):
                    report.add(src, hpath, "a second cookie: Flagger's nginx router keeps one")
                cookie = conv.get("exact", cookie)
            elif "prefix" in conv:
                report.add(src, hpath, "a prefix: Flagger's nginx router drops it and the "
                           "header then means only always/never")  # fmt: skip
            elif header not in (None, name.lower()):
                report.add(src, hpath, "a second header: Flagger's nginx router keeps one")
            else:
                header, value, pattern = name.lower(), conv.get("exact"), conv.get("regex")
    if report.since(mark):
        return None
    rules = Rules(header=header, value=value, pattern=pattern, cookie=cookie)
    found = rules.canary_matches()
    if not found:
        report.add(src, PATH, "no header or cookie: under nginx nobody would reach the canary")
        return None
    return found
