"""Istio shapes shared by the Istio and Flagger importers: StringMatch, HTTPMatchRequest,
Headers, HTTPRetry, HTTPFaultInjection -> our YAML.

A match item with a refused part converts to None: with `--best-effort` the item is dropped
whole (the route then matches less, never more).
"""

from __future__ import annotations

import re
from typing import Any

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    check_keys,
    duration,
    number,
    to_num,
)

_STRING_KINDS = ("exact", "prefix", "regex")
# The canonical Istio cookie pattern: `^(.*?;)?(NAME=VALUE)(;.*)?$` -> a cookie match.
COOKIE_RE = re.compile(r"^\^\(\.\*\?;\)\?\(([A-Za-z0-9_\-.]+)=(.+)\)\(;\.\*\)\?\$$")
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
MATCH_KEYS = {"name", "uri", "method", "headers", "queryParams", "withoutHeaders", "authority"}

# Refused match fields and why (shared by VirtualService and Flagger `match`).
REFUSED: Table = {
    "spec.http[].match[].port": "the port the request came in on; give each port a listener",
    "spec.http[].match[].sourceLabels": "selects calling pods by label (mesh-internal)",
    "spec.http[].match[].sourceNamespace": "selects calling pods by namespace (mesh-internal)",
    "spec.http[].match[].gateways": "selects the Istio gateway a request came through",
    "spec.http[].match[].scheme": "matching on the URI scheme",
    "spec.http[].match[].ignoreUriCase": "case-insensitive paths (write a regex with (?i))",
    "spec.http[].match[].statPrefix": "Envoy stats prefixes",
    "spec.http[].fault.abort.grpcStatus": "gRPC aborts (HTTP/1.1 only)",
    "spec.http[].fault.abort.http2Error": "HTTP/2 aborts (HTTP/1.1 only)",
    "spec.http[].fault.delay.exponentialDelay": "only fixedDelay",
}


def string_match(report: Report, src: Source, value: Any, path: str, empty: str = "") -> Doc | None:
    """Istio StringMatch -> ours. `{}` means `empty` (present/absent) where Istio allows it."""
    if not isinstance(value, dict):
        report.add(src, path, "expected a mapping with exact, prefix or regex")
        return None
    if not value and empty:
        return {empty: True}
    keys = [k for k in value if k in _STRING_KINDS]
    mark = report.mark()
    check_keys(report, src, value, path, set(_STRING_KINDS))
    if len(keys) != 1:
        report.add(src, path, "expected exactly one of exact, prefix, regex")
        return None
    return None if report.since(mark) else {keys[0]: str(value[keys[0]])}


def cookie_from_regex(regex: str) -> tuple[str, Doc] | None:
    """The canonical cookie regex as (cookie name, our match), else None."""
    cookie = COOKIE_RE.match(regex)
    if not cookie:
        return None
    value = cookie.group(2)
    key = "regex" if re.escape(value) != value else "exact"
    return cookie.group(1), {key: value}


def _headers_match(report: Report, src: Source, m: Doc, path: str, out: Doc) -> None:
    for name, sm in (m.get("headers") or {}).items():
        hpath = f"{path}.headers.{name}"
        conv = string_match(report, src, sm, hpath, empty="present")
        if conv is None:
            continue
        cookie = cookie_from_regex(conv.get("regex", "")) if name.lower() == "cookie" else None
        if cookie:
            out.setdefault("cookies", {})[cookie[0]] = cookie[1]
        else:
            out.setdefault("headers", {})[name.lower()] = conv
    for name, sm in (m.get("withoutHeaders") or {}).items():
        if sm:  # a negated value has no equivalent: only absence can be expressed
            report.add(src, f"{path}.withoutHeaders.{name}", "only {} (header absent) is supported")
            continue
        out.setdefault("headers", {})[name.lower()] = {"absent": True}


def _method(report: Report, src: Source, value: Any, path: str) -> list[str] | None:
    conv = string_match(report, src, value, path)
    if conv is None:
        return None
    if "exact" in conv:
        return [conv["exact"].upper()]
    alts = re.fullmatch(r"\^?\(?([A-Z|]+)\)?\$?", conv.get("regex", ""))
    if alts:  # `GET|HEAD` is common and means a method list
        return [m for m in alts.group(1).split("|") if m]
    report.add(src, path, "only exact methods or a regex like GET|HEAD are supported")
    return None


def convert_match(report: Report, src: Source, m: Any, path: str) -> Doc | None:
    """One Istio HTTPMatchRequest -> one item of our `match:` list (all keys ANDed);
    None when a part of it is refused."""
    if not isinstance(m, dict):
        report.add(src, path, "expected a mapping")
        return None
    mark = report.mark()
    check_keys(report, src, m, path, MATCH_KEYS, refused=REFUSED)
    out: Doc = {}
    if "uri" in m:
        conv = string_match(report, src, m["uri"], f"{path}.uri")
        if conv:
            out["path"] = conv
    if "method" in m:
        methods = _method(report, src, m["method"], f"{path}.method")
        if methods:
            out["method"] = methods
    if "authority" in m:  # HTTP/1.1 carries :authority as Host
        conv = string_match(report, src, m["authority"], f"{path}.authority")
        if conv:
            out.setdefault("headers", {})["host"] = conv
    _headers_match(report, src, m, path, out)
    for name, sm in (m.get("queryParams") or {}).items():
        conv = string_match(report, src, sm, f"{path}.queryParams.{name}", empty="present")
        if conv:
            out.setdefault("query", {})[name] = conv
    return None if report.since(mark) else out


def convert_matches(report: Report, src: Source, items: Any, path: str) -> list[Doc] | None:
    """A match list; None when every item was refused (the route must not match all)."""
    if not items:
        return []
    conv = [convert_match(report, src, m, f"{path}[{i}]") for i, m in enumerate(items)]
    kept = [m for m in conv if m is not None]
    return kept or None


def convert_header_ops(report: Report, src: Source, h: Any, path: str) -> Doc:
    """Istio Headers {request, response: {set, add, remove}} -> our HeaderPolicy YAML."""
    out: Doc = {}
    if not isinstance(h, dict):
        report.add(src, path, "expected a mapping")
        return out
    check_keys(report, src, h, path, {"request", "response"})
    for direction in ("request", "response"):
        ops = h.get(direction)
        if not isinstance(ops, dict):
            continue
        check_keys(report, src, ops, f"{path}.{direction}", {"set", "add", "remove"})
        conv = {k: ops[k] for k in ("set", "add", "remove") if ops.get(k)}
        if conv:
            out[direction] = conv
    return out


def convert_retries(report: Report, src: Source, r: Any, path: str) -> Doc | None:
    """Istio HTTPRetry -> retries (`attempts` are extra tries in both); None if refused."""
    if not isinstance(r, dict):
        report.add(src, path, "expected a mapping")
        return None
    mark = report.mark()
    check_keys(report, src, r, path, {"attempts", "perTryTimeout", "retryOn"})
    attempts = to_num(report, src, r.get("attempts", 0), f"{path}.attempts", integer=True)
    out: Doc = {"attempts": attempts}
    if "perTryTimeout" in r:
        out["per_try_timeout"] = duration(report, src, r["perTryTimeout"], f"{path}.perTryTimeout")
    if "retryOn" in r:
        out["retry_on"] = _retry_on(report, src, str(r["retryOn"]), f"{path}.retryOn")
    return None if report.since(mark) else out


def _retry_on(report: Report, src: Source, text: str, path: str) -> list[str]:
    out: list[str] = []
    for cond in filter(None, (c.strip() for c in text.split(","))):
        if cond in _RETRY_NOOP:
            continue
        mapped = _RETRY_MAP.get(cond)
        if mapped is None:
            hint = " (use gateway-error: 502, 503, 504)" if cond == "5xx" else ""
            report.add(src, path, f"{cond}: not supported{hint}")
            continue
        out.extend(c for c in mapped if c not in out)
    return out or ["connect-failure"]


def percent(value: Any) -> float:
    """Istio Percent `{value: 12.5}` (or the old integer form); unset (or not a number,
    which our validator then reports) means 100."""
    raw = value.get("value", 100.0) if isinstance(value, dict) else value
    try:
        return float(raw) if raw is not None else 100.0
    except (TypeError, ValueError):
        return 100.0


def convert_fault(report: Report, src: Source, f: Any, path: str) -> Doc | None:
    """HTTPFaultInjection: fixed delay and HTTP-status abort; gRPC and exponential are not."""
    if not isinstance(f, dict):
        report.add(src, path, "expected a mapping")
        return None
    mark = report.mark()
    check_keys(report, src, f, path, {"delay", "abort"})
    out: Doc = {}
    delay, abort = f.get("delay"), f.get("abort")
    if isinstance(delay, dict):
        known = {"fixedDelay", "percentage", "percent"}
        check_keys(report, src, delay, f"{path}.delay", known, refused=REFUSED)
        fixed = duration(report, src, delay.get("fixedDelay"), f"{path}.delay.fixedDelay")
        pct = percent(delay.get("percentage", delay.get("percent")))
        if fixed:
            out["delay"] = {"fixed": fixed, "percent": number(pct)}
    if isinstance(abort, dict):
        check_keys(report, src, abort, f"{path}.abort", {"httpStatus", "percentage"}, None, REFUSED)
        if "httpStatus" in abort:
            pct = percent(abort.get("percentage"))
            status = to_num(report, src, abort["httpStatus"], f"{path}.abort.httpStatus", True)
            out["abort"] = {"status": status, "percent": number(pct)}
    # a fault is a test the user asked for: half of it would test something else
    return None if report.since(mark) or not out else out
