"""Istio VirtualService + DestinationRule -> routes and upstreams.

Istio evaluates `http[]` first-match-wins, exactly as our `routes:`, so each http route keeps
its position. DestinationRule subsets name pods by labels; `--endpoints` binds each subset
name to addresses. Every field without an equivalent is reported, never dropped.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.importers.common import (
    Doc,
    Errors,
    Source,
    check_keys,
    duration_text,
    go_duration,
    number,
    unique_name,
    upstreams_for,
)
from proxy.importers.destination_rule import Subsets, short_host

KINDS = ("VirtualService", "DestinationRule")
_STRING_KINDS = ("exact", "prefix", "regex")
# The canonical Istio cookie pattern: `^(.*?;)?(NAME=VALUE)(;.*)?$` -> a cookie match.
_COOKIE_RE = re.compile(r"^\^\(\.\*\?;\)\?\(([A-Za-z0-9_\-.]+)=(.+)\)\(;\.\*\)\?\$$")
# retryOn conditions that only ever fire on HTTP/2 or gRPC: our upstream side speaks
# HTTP/1.1, so they can never trigger and dropping them changes nothing.
_RETRY_NOOP = {
    "refused-stream",
    "cancelled",
    "unavailable",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "retriable-status-codes",
}
_RETRY_MAP = {
    "connect-failure": ["connect-failure"],
    "reset": ["reset"],
    "gateway-error": ["502", "503", "504"],
    "502": ["502"],
    "503": ["503"],
    "504": ["504"],
}
_MATCH_KEYS = {"name", "uri", "method", "headers", "queryParams", "withoutHeaders", "authority"}
_HTTP_KEYS = {
    "name",
    "match",
    "route",
    "mirror",
    "mirrors",
    "mirrorPercentage",
    "mirrorPercent",
    "fault",
    "retries",
    "timeout",
    "headers",
}


def string_match(errors: Errors, src: Source, value: Any, path: str, empty: str = "") -> Doc | None:
    """Istio StringMatch -> ours. `{}` means `empty` (present/absent) where Istio allows it."""
    if not isinstance(value, dict):
        errors.add(src, path, "expected a mapping with exact, prefix or regex")
        return None
    if not value and empty:
        return {empty: True}
    keys = [k for k in value if k in _STRING_KINDS]
    check_keys(errors, src, value, path, set(_STRING_KINDS))
    if len(keys) != 1:
        errors.add(src, path, "expected exactly one of exact, prefix, regex")
        return None
    return {keys[0]: str(value[keys[0]])}


def _headers_match(errors: Errors, src: Source, m: Doc, path: str, out: Doc) -> None:
    for name, sm in (m.get("headers") or {}).items():
        hpath = f"{path}.headers.{name}"
        conv = string_match(errors, src, sm, hpath, empty="present")
        if conv is None:
            continue
        cookie = _COOKIE_RE.match(conv.get("regex", "")) if name.lower() == "cookie" else None
        if cookie:
            value = cookie.group(2)
            key = "regex" if re.escape(value) != value else "exact"
            out.setdefault("cookies", {})[cookie.group(1)] = {key: value}
        else:
            out.setdefault("headers", {})[name.lower()] = conv
    for name, sm in (m.get("withoutHeaders") or {}).items():
        if sm:  # a negated value has no equivalent: only absence can be expressed
            errors.add(src, f"{path}.withoutHeaders.{name}", "only {} (header absent) is supported")
            continue
        out.setdefault("headers", {})[name.lower()] = {"absent": True}


def _method(errors: Errors, src: Source, value: Any, path: str) -> list[str] | None:
    conv = string_match(errors, src, value, path)
    if conv is None:
        return None
    if "exact" in conv:
        return [conv["exact"].upper()]
    alts = re.fullmatch(r"\^?\(?([A-Z|]+)\)?\$?", conv.get("regex", ""))
    if alts:  # `GET|HEAD` is common and means a method list
        return [m for m in alts.group(1).split("|") if m]
    errors.add(src, path, "only exact methods or a regex like GET|HEAD are supported")
    return None


def convert_match(errors: Errors, src: Source, m: Any, path: str) -> Doc:
    """One Istio HTTPMatchRequest -> one item of our `match:` list (all keys ANDed)."""
    if not isinstance(m, dict):
        errors.add(src, path, "expected a mapping")
        return {}
    check_keys(errors, src, m, path, _MATCH_KEYS)
    if m.get("ignoreUriCase"):
        errors.unsupported(src, f"{path}.ignoreUriCase")
    out: Doc = {}
    if "uri" in m:
        conv = string_match(errors, src, m["uri"], f"{path}.uri")
        if conv:
            out["path"] = conv
    if "method" in m:
        methods = _method(errors, src, m["method"], f"{path}.method")
        if methods:
            out["method"] = methods
    if "authority" in m:  # HTTP/1.1 carries :authority as Host
        conv = string_match(errors, src, m["authority"], f"{path}.authority")
        if conv:
            out.setdefault("headers", {})["host"] = conv
    _headers_match(errors, src, m, path, out)
    for name, sm in (m.get("queryParams") or {}).items():
        conv = string_match(errors, src, sm, f"{path}.queryParams.{name}", empty="present")
        if conv:
            out.setdefault("query", {})[name] = conv
    return out


def convert_header_ops(errors: Errors, src: Source, h: Any, path: str) -> Doc:
    """Istio Headers {request, response: {set, add, remove}} -> our HeaderPolicy YAML."""
    out: Doc = {}
    if not isinstance(h, dict):
        errors.add(src, path, "expected a mapping")
        return out
    check_keys(errors, src, h, path, {"request", "response"})
    for direction in ("request", "response"):
        ops = h.get(direction)
        if not isinstance(ops, dict):
            continue
        check_keys(errors, src, ops, f"{path}.{direction}", {"set", "add", "remove"})
        conv = {k: ops[k] for k in ("set", "add", "remove") if ops.get(k)}
        if conv:
            out[direction] = conv
    return out


def convert_retries(errors: Errors, src: Source, r: Any, path: str) -> Doc:
    """Istio HTTPRetry -> retries. `attempts` are extra tries in both."""
    if not isinstance(r, dict):
        errors.add(src, path, "expected a mapping")
        return {}
    check_keys(errors, src, r, path, {"attempts", "perTryTimeout", "retryOn"})
    out: Doc = {"attempts": int(r.get("attempts", 0))}
    if "perTryTimeout" in r:
        out["per_try_timeout"] = _duration(errors, src, r["perTryTimeout"], f"{path}.perTryTimeout")
    if "retryOn" in r:
        out["retry_on"] = _retry_on(errors, src, str(r["retryOn"]), f"{path}.retryOn")
    return out


def _retry_on(errors: Errors, src: Source, text: str, path: str) -> list[str]:
    out: list[str] = []
    for cond in filter(None, (c.strip() for c in text.split(","))):
        if cond in _RETRY_NOOP:
            continue
        mapped = _RETRY_MAP.get(cond)
        if mapped is None:
            hint = " (use gateway-error: 502, 503, 504)" if cond == "5xx" else ""
            errors.add(src, path, f"{cond}: not supported{hint}")
            continue
        out.extend(c for c in mapped if c not in out)
    return out or ["connect-failure"]


def _duration(errors: Errors, src: Source, value: Any, path: str) -> str:
    seconds = go_duration(value)
    if seconds is None:
        errors.add(src, path, f"{value!r}: not a duration")
        return "0s"
    return duration_text(seconds)


def _percent(value: Any) -> float:
    """Istio Percent `{value: 12.5}` (or the old integer form)."""
    if isinstance(value, dict):
        return float(value.get("value", 100.0))
    return float(value) if value is not None else 100.0


def convert_fault(errors: Errors, src: Source, f: Any, path: str) -> Doc:
    """HTTPFaultInjection: fixed delay and HTTP-status abort; gRPC and exponential are not."""
    out: Doc = {}
    if not isinstance(f, dict):
        errors.add(src, path, "expected a mapping")
        return out
    check_keys(errors, src, f, path, {"delay", "abort"})
    delay, abort = f.get("delay"), f.get("abort")
    if isinstance(delay, dict):
        check_keys(errors, src, delay, f"{path}.delay", {"fixedDelay", "percentage", "percent"})
        pct = _percent(delay.get("percentage", delay.get("percent")))
        fixed = _duration(errors, src, delay.get("fixedDelay"), f"{path}.delay.fixedDelay")
        out["delay"] = {"fixed": fixed, "percent": number(pct)}
    if isinstance(abort, dict):
        check_keys(errors, src, abort, f"{path}.abort", {"httpStatus", "percentage"})
        if "httpStatus" in abort:
            pct = number(_percent(abort.get("percentage")))
            out["abort"] = {"status": int(abort["httpStatus"]), "percent": pct}
    return out


class _Refs:
    """Subsets the routes reference, as (host, subset, upstream name)."""

    def __init__(self) -> None:
        self.used: dict[str, tuple[str, str | None]] = {}

    def upstream(self, dest: Doc) -> str:
        host = short_host(str(dest.get("host", "")))
        subset = dest.get("subset")
        name = str(subset) if subset else host
        self.used.setdefault(name, (host, str(subset) if subset else None))
        return name


def _destination(errors: Errors, src: Source, d: Any, path: str, refs: _Refs) -> Doc | None:
    if not isinstance(d, dict) or not isinstance(d.get("destination"), dict):
        errors.add(src, path, "expected a destination")
        return None
    check_keys(errors, src, d, path, {"destination", "weight", "headers"})
    dest = d["destination"]
    check_keys(errors, src, dest, f"{path}.destination", {"host", "subset", "port"})
    out: Doc = {"destination": refs.upstream(dest)}
    if "weight" in d:
        out["weight"] = number(float(d["weight"]))
    if d.get("headers"):
        out["headers"] = convert_header_ops(errors, src, d["headers"], f"{path}.headers")
    return out


def _mirror(errors: Errors, src: Source, h: Doc, path: str, refs: _Refs) -> Doc | None:
    if h.get("mirrors"):
        mirrors = h["mirrors"]
        if len(mirrors) > 1:
            errors.add(src, f"{path}.mirrors", "only one mirror destination is supported")
            return None
        m = mirrors[0]
        dest, pct = m.get("destination") or {}, m.get("percentage")
    elif h.get("mirror"):
        dest = h["mirror"]
        pct = h.get("mirrorPercentage", h.get("mirrorPercent"))
    else:
        return None
    return {"destination": refs.upstream(dest), "percent": number(_percent(pct))}


def convert_http(errors: Errors, src: Source, h: Doc, path: str, name: str, refs: _Refs) -> Doc:
    """One VirtualService http[] entry -> one route."""
    check_keys(errors, src, h, path, _HTTP_KEYS)
    route: Doc = {"name": name}
    service = short_host(str((src.spec.get("hosts") or [""])[0]))
    if service and service != name:
        route["service"] = service
    matches = h.get("match") or []
    if matches:
        route["match"] = [
            convert_match(errors, src, m, f"{path}.match[{i}]") for i, m in enumerate(matches)
        ]
    dests = [
        _destination(errors, src, d, f"{path}.route[{i}]", refs)
        for i, d in enumerate(h.get("route") or [])
    ]
    route["route"] = _istio_weights([d for d in dests if d])
    if not route["route"]:
        errors.add(src, f"{path}.route", "no destination (redirect/directResponse not supported)")
    mirror = _mirror(errors, src, h, path, refs)
    if mirror:
        route["mirror"] = mirror
    _route_options(errors, src, h, path, route)
    return route


def _istio_weights(dests: list[Doc]) -> list[Doc]:
    """Istio: a lone destination takes 100 %; among several, a missing weight means 0."""
    if len(dests) > 1 and any("weight" in d for d in dests):
        for d in dests:
            d.setdefault("weight", 0)
    return dests


def _route_options(errors: Errors, src: Source, h: Doc, path: str, route: Doc) -> None:
    if "timeout" in h:
        route["timeout"] = _duration(errors, src, h["timeout"], f"{path}.timeout")
    if "retries" in h:
        route["retries"] = convert_retries(errors, src, h["retries"], f"{path}.retries")
    if "fault" in h:
        route["fault"] = convert_fault(errors, src, h["fault"], f"{path}.fault")
    if h.get("headers"):
        route["headers"] = convert_header_ops(errors, src, h["headers"], f"{path}.headers")


def translate(
    sources: list[Source], endpoints: dict[str, list[str]], errors: Errors
) -> tuple[list[Doc], dict[str, Doc]]:
    """VirtualServices -> routes (in file order), DestinationRules -> the upstreams they use."""
    subsets, refs, taken = Subsets(), _Refs(), set[str]()
    routes: list[Doc] = []
    for src in sources:
        if src.kind == "DestinationRule":
            subsets.add(errors, src)
    for src in sources:
        if src.kind == "VirtualService":
            routes.extend(_virtual_service(errors, src, refs, taken))
    return routes, _upstreams(errors, sources, subsets, refs, endpoints)


def _virtual_service(errors: Errors, src: Source, refs: _Refs, taken: set[str]) -> list[Doc]:
    check_keys(errors, src, src.spec, "spec", {"hosts", "gateways", "http", "exportTo"})
    out = []
    for i, h in enumerate(src.spec.get("http") or []):
        name = unique_name(str(h.get("name") or f"{src.name}-{i}"), src.name, taken)
        out.append(convert_http(errors, src, h, f"spec.http[{i}]", name, refs))
    if not out:
        errors.add(src, "spec.http", "no http routes (tcp/tls routes are not supported)")
    return out


def _upstreams(
    errors: Errors,
    sources: list[Source],
    subsets: Subsets,
    refs: _Refs,
    endpoints: dict[str, list[str]],
) -> dict[str, Doc]:
    vs = next((s for s in sources if s.kind == "VirtualService"), sources[0])
    out: dict[str, Doc] = {}
    for name, (host, subset) in refs.used.items():
        if subset is not None and subset not in subsets.by_host.get(host, {}):
            errors.add(vs, "subset", f"{subset}: no DestinationRule for host {host} defines it")
            continue
        ups = upstreams_for([name], endpoints, errors, vs, "subset")
        if name in ups:
            opts = dict(subsets.host_options.get(host, {}))
            opts.update(subsets.by_host.get(host, {}).get(subset or "", {}))
            out[name] = {**ups[name], **opts}
    return out
