"""A parsed YAML document -> `Config`, with EVERY error reported by its path.

Pure: no YAML, no I/O. `validate(data)` returns `(config, [])` or `(None, errors)`
where each error is `(path, message)` and a path reads `routes[1].route[0].weight`.
`proxy.config.load` turns paths into `file:line:` prefixes. The rules follow
Istio, Flagger and argo-rollouts validation: an unknown key, a wrong type or a
dangling reference is an error, never a silent default.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config import schema as s
from proxy.routing.regex import regex_error

Error = tuple[str, str]
Lines = Callable[[str], int | None] | Mapping[str, int] | None


class _Bad:
    """Marks a value that failed validation (its error is already recorded)."""


BAD: Any = _Bad()

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: object) -> float:
    """`500ms`, `2s`, `1m`, `1h`, `1m30s` or a bare number of seconds -> float seconds >= 0.

    Raises ValueError with a message for the user.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a duration like 500ms, 2s, 1m30s")
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"invalid duration {text!r}: use e.g. 500ms, 2s, 1m30s, 1h") from None
    seconds = _finite(value)
    if seconds is None or seconds < 0:
        raise ValueError("must be a duration >= 0")
    return seconds


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def did_you_mean(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Ctx:
    """Collects errors and the names that references must resolve to."""

    def __init__(self) -> None:
        self.errors: list[Error] = []
        self.upstreams: list[str] = []
        self.routes: dict[str, s.Route] = {}

    def err(self, path: str, message: str) -> Any:
        self.errors.append((path, message))
        return BAD

    def mapping(
        self, value: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """The mapping, after reporting unknown and missing keys; None if not a mapping."""
        if not isinstance(value, dict):
            self.err(path, "must be a mapping")
            return None
        for key in value:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                self.err(join(path, key), f'unknown key "{key}"{hint}')
        for key in required:
            if key not in value:
                self.err(join(path, key), "is required")
        return value

    def seq(self, value: object, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.err(path, "must be a list")
            return None
        return value


Reader = Callable[[Ctx, object, str], Any]


def fields(
    ctx: Ctx, m: Mapping[str, Any], path: str, readers: Mapping[str, Reader]
) -> dict[str, Any]:
    """Read the keys of `m` that have a reader; keep only the values that passed."""
    out: dict[str, Any] = {}
    for key, read in readers.items():
        if key in m:
            value = read(ctx, m[key], join(path, key))
            if value is not BAD:
                out[key] = value
    return out


def build(
    ctx: Ctx,
    value: object,
    path: str,
    cls: type,
    readers: Mapping[str, Reader],
    required: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """A dataclass from a mapping whose keys equal the field names; BAD if not a mapping."""
    m = ctx.mapping(value, path, list(readers), required)
    if m is None:
        return BAD
    kw = dict(defaults or {})
    kw.update(fields(ctx, m, path, readers))
    for key in required:
        kw.setdefault(key, "")  # placeholder: the error is recorded, the result discarded
    return cls(**kw)


# ---- scalars -----------------------------------------------------------------------------


def string(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        hint = " (quote it)" if isinstance(value, bool | float) else ""
        return ctx.err(path, f"must be a string{hint}")
    return str(value)


def nonempty(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not text:
        return ctx.err(path, "must not be empty")
    return text


def name(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not _NAME.match(text):
        return ctx.err(path, "must be a name of letters, digits, '.', '_' or '-'")
    return text


def header_name(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not _TOKEN.match(text):
        return ctx.err(path, f'"{text}" is not a valid header name')
    return text if text is BAD else text.lower()


def header_value(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and ("\r" in text or "\n" in text or "\0" in text):
        return ctx.err(path, "must not contain CR, LF or NUL")
    return text


def _finite(value: int | float) -> float | None:
    try:
        f = float(value)  # an int beyond 1e308 overflows
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def number(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ctx.err(path, "must be a number")
    f = _finite(value)
    return ctx.err(path, "must be a finite number") if f is None else f


def at_least(low: float, integer: bool = False) -> Reader:
    def read(ctx: Ctx, value: object, path: str) -> Any:
        v = integer_(ctx, value, path) if integer else number(ctx, value, path)
        if v is not BAD and v < low:
            return ctx.err(path, f"must be >= {low:g}")
        return v

    return read


def between(low: float, high: float) -> Reader:
    def read(ctx: Ctx, value: object, path: str) -> Any:
        v = number(ctx, value, path)
        if v is not BAD and not low <= v <= high:
            return ctx.err(path, f"must be between {low:g} and {high:g}")
        return v

    return read


percent = between(0, 100)


def integer_(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return ctx.err(path, "must be an integer")
    return value


def boolean(ctx: Ctx, value: object, path: str) -> Any:
    if not isinstance(value, bool):
        return ctx.err(path, "must be true or false")
    return value


def duration(ctx: Ctx, value: object, path: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        return ctx.err(path, str(exc))


def positive_duration(ctx: Ctx, value: object, path: str) -> Any:
    v = duration(ctx, value, path)
    if v is not BAD and v <= 0:
        return ctx.err(path, "must be a duration > 0")
    return v


def one_of(*choices: str) -> Reader:
    def read(ctx: Ctx, value: object, path: str) -> Any:
        text = string(ctx, value, path)
        if text is not BAD and text not in choices:
            hint = did_you_mean(text, choices)
            return ctx.err(
                path, f'unknown value "{text}"{hint}; expected one of {", ".join(choices)}'
            )
        return text

    return read


def list_of(item: Reader, nonempty_: bool = False) -> Reader:
    def read(ctx: Ctx, value: object, path: str) -> Any:
        items = ctx.seq(value, path)
        if items is None:
            return BAD
        if nonempty_ and not items:
            return ctx.err(path, "must not be empty")
        out = [item(ctx, v, f"{path}[{i}]") for i, v in enumerate(items)]
        return BAD if any(v is BAD for v in out) else tuple(out)

    return read


def set_of(item: Reader) -> Reader:
    read_list = list_of(item, nonempty_=True)

    def read(ctx: Ctx, value: object, path: str) -> Any:
        items = read_list(ctx, value, path)
        return items if items is BAD else frozenset(items)

    return read


def str_map(key: Reader, value: Reader) -> Reader:
    """`{k: v}` -> tuple of (k, v) in YAML order."""

    def read(ctx: Ctx, data: object, path: str) -> Any:
        if not isinstance(data, dict):
            return ctx.err(path, "must be a mapping")
        out = [(key(ctx, k, join(path, k)), value(ctx, v, join(path, k))) for k, v in data.items()]
        if any(BAD in pair for pair in out):
            return BAD
        names = [k for k, _ in out]
        for k, n in zip(data, names, strict=True):
            if names.count(n) > 1:  # "X-A" and "x-a" name the same header
                return ctx.err(join(path, k), f'"{n}" is given more than once')
        return tuple(out)

    return read


_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?$")


def _split_host_port(text: str) -> tuple[str, str] | None:
    """`host:port` or `[v6]:port` -> (host, port); None if the host is not a name or IP."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not _HOST.match(host):
            return None
    return (host, port) if sep else None


def host_port(min_port: int = 1) -> Reader:
    def read(ctx: Ctx, value: object, path: str) -> Any:
        text = string(ctx, value, path)
        if text is BAD:
            return BAD
        parts = _split_host_port(text)
        if parts is None or not parts[1].isdigit():
            return ctx.err(path, f'"{text}" must be host:port, e.g. 127.0.0.1:8080')
        if not min_port <= int(parts[1]) <= 65535:
            return ctx.err(path, f'"{text}": port must be between {min_port} and 65535')
        return text

    return read


def cidr(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is BAD:
        return BAD
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return ctx.err(path, f'"{text}" is not a valid CIDR (e.g. 10.0.0.0/8 or 192.0.2.7)')


def status_code(ctx: Ctx, value: object, path: str) -> Any:
    v = integer_(ctx, value, path)
    if v is not BAD and not 200 <= v <= 599:
        return ctx.err(path, "must be an HTTP status code between 200 and 599")
    return v


def regex(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is BAD:
        return BAD
    problem = regex_error(text)
    return text if problem is None else ctx.err(path, problem)


# ---- match rules ---------------------------------------------------------------------------

_KINDS: tuple[s.MatchKind, ...] = ("exact", "prefix", "regex", "present", "absent")


def string_match(ctx: Ctx, value: object, path: str, is_path: bool = False) -> Any:
    """`{exact|prefix|regex: V}` or `{present|absent: true}` -> StringMatch."""
    kinds = _KINDS[:3] if is_path else _KINDS
    m = ctx.mapping(value, path, kinds)
    if m is None:
        return BAD
    given = [k for k in kinds if k in m]
    if len(given) != 1:
        return ctx.err(path, f"needs exactly one of {', '.join(kinds)}")
    kind, raw = given[0], m[given[0]]
    p = join(path, kind)
    if kind in ("present", "absent"):
        if raw is not True:
            return ctx.err(p, "must be true")
        return s.StringMatch(kind)
    text = regex(ctx, raw, p) if kind == "regex" else string(ctx, raw, p)
    if text is not BAD and is_path and kind != "regex" and not text.startswith("/"):
        return ctx.err(p, 'must start with "/"')
    return BAD if text is BAD else s.StringMatch(kind, text)


def _path_match(ctx: Ctx, value: object, path: str) -> Any:
    return string_match(ctx, value, path, is_path=True)


def _method(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not _TOKEN.match(text):
        return ctx.err(path, f'"{text}" is not a valid HTTP method')
    return text if text is BAD else text.upper()


_named_matches = str_map(header_name, string_match)
_cookie_matches = str_map(nonempty, string_match)
_RULE: dict[str, Reader] = {
    "path": _path_match,
    "method": set_of(_method),
    "headers": _named_matches,
    "cookies": _cookie_matches,
    "query": _cookie_matches,
    "source_ip": list_of(cidr, nonempty_=True),
    "region": set_of(nonempty),
    "users": set_of(nonempty),
}


def match_rule(ctx: Ctx, value: object, path: str) -> Any:
    return build(ctx, value, path, s.MatchRule, _RULE)


def match_list(ctx: Ctx, value: object, path: str) -> Any:
    """A `match:` list (OR of rules). A single mapping is an error, not a guess."""
    if isinstance(value, dict):
        return ctx.err(path, "must be a list of match rules (put a '-' before the rule)")
    return list_of(match_rule)(ctx, value, path)


# ---- routes --------------------------------------------------------------------------------


def subset_ref(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and text not in ctx.upstreams:
        hint = did_you_mean(text, ctx.upstreams)
        return ctx.err(path, f'unknown upstream "{text}"{hint}')
    return text


_OPS: dict[str, Reader] = {
    "set": str_map(header_name, header_value),
    "add": str_map(header_name, header_value),
    "remove": list_of(header_name),
}


def header_ops(ctx: Ctx, value: object, path: str) -> Any:
    return build(ctx, value, path, s.HeaderOps, _OPS)


def header_policy(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"request": header_ops, "response": header_ops}
    return build(ctx, value, path, s.HeaderPolicy, readers)


def destination(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"destination": subset_ref, "weight": at_least(0), "headers": header_policy}
    m = ctx.mapping(value, path, list(readers), ["destination"])
    if m is None:
        return BAD
    kw = fields(ctx, m, path, readers)
    return s.Destination(kw.pop("destination", ""), **kw)


def split(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"by": one_of("random", "header", "cookie", "source_ip"), "name": nonempty}
    sp = build(ctx, value, path, s.Split, readers)
    if sp is not BAD and sp.by in ("header", "cookie") and not sp.name:
        return ctx.err(join(path, "name"), f"is required with by: {sp.by}")
    if sp is not BAD and sp.by == "header":
        return s.Split("header", sp.name.lower())
    return sp


def _cookie_name(ctx: Ctx, value: object, path: str) -> Any:
    text = nonempty(ctx, value, path)
    if text is not BAD and not _TOKEN.match(text):
        return ctx.err(path, f'"{text}" is not a valid cookie name')
    return text


def _seconds_int(ctx: Ctx, value: object, path: str) -> Any:
    v = duration(ctx, value, path)
    return v if v is BAD else int(v)


def sticky(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"cookie": _cookie_name, "max_age": _seconds_int}
    return build(ctx, value, path, s.Sticky, readers, required=["cookie"])


def mirror(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"destination": subset_ref, "percent": percent}
    return build(ctx, value, path, s.Mirror, readers, required=["destination"])


def retries(ctx: Ctx, value: object, path: str) -> Any:
    readers = {
        "attempts": at_least(0, integer=True),
        "per_try_timeout": positive_duration,
        "retry_on": set_of(one_of(*s.RETRY_ON)),
    }
    return build(ctx, value, path, s.Retries, readers)


def fault(ctx: Ctx, value: object, path: str) -> Any:
    abort = {"status": status_code, "percent": percent}
    delay = {"fixed": duration, "percent": percent}
    readers: dict[str, Reader] = {
        "abort": lambda c, v, p: build(c, v, p, s.FaultAbort, abort, ["status"]),
        "delay": lambda c, v, p: build(c, v, p, s.FaultDelay, delay, ["fixed"]),
    }
    f = build(ctx, value, path, s.Fault, readers)
    if f is not BAD and f.abort is None and f.delay is None and value:
        return BAD  # the inner errors are recorded
    if f is not BAD and f.abort is None and f.delay is None:
        return ctx.err(path, "needs abort or delay")
    return f


def preview(ctx: Ctx, value: object, path: str) -> Any:
    return build(ctx, value, path, s.Preview, {"header": header_name, "value": header_value})


_ROUTE: dict[str, Reader] = {
    "name": name,
    "route": list_of(destination, nonempty_=True),
    "match": match_list,
    "split": split,
    "sticky": sticky,
    "mirror": mirror,
    "timeout": positive_duration,
    "retries": retries,
    "fault": fault,
    "headers": header_policy,
    "max_body": at_least(0, integer=True),
    "service": nonempty,
    "preview": preview,
}


def route(ctx: Ctx, value: object, path: str) -> Any:
    m = ctx.mapping(value, path, list(_ROUTE), ["name", "route"])
    if m is None:
        return BAD
    kw = fields(ctx, m, path, _ROUTE)
    dests = kw.pop("route", ())
    _check_destinations(ctx, dests, join(path, "route"))
    return s.Route(name=kw.pop("name", ""), destinations=dests, **kw)


def _check_destinations(ctx: Ctx, dests: tuple[s.Destination, ...], path: str) -> None:
    seen: set[str] = set()
    for i, d in enumerate(dests):
        if d.subset in seen:
            ctx.err(f"{path}[{i}].destination", f'"{d.subset}" appears twice in this route')
        seen.add(d.subset)
    if dests and all(d.weight == 0 for d in dests):
        ctx.err(path, "all weights are 0: at least one destination needs a weight > 0")


def routes(ctx: Ctx, value: object, path: str) -> Any:
    parsed = list_of(route, nonempty_=True)(ctx, value, path)
    if parsed is BAD:
        return BAD
    for i, r in enumerate(parsed):
        if r.name in ctx.routes:
            ctx.err(f"{path}[{i}].name", f'duplicate route name "{r.name}"')
        ctx.routes.setdefault(r.name, r)
    return parsed


# ---- upstreams -----------------------------------------------------------------------------


def health_check(ctx: Ctx, value: object, path: str) -> Any:
    readers = {
        "path": _abs_path,
        "interval": positive_duration,
        "timeout": positive_duration,
        "healthy": at_least(1, integer=True),
        "unhealthy": at_least(1, integer=True),
    }
    return build(ctx, value, path, s.HealthCheck, readers)


def _abs_path(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not text.startswith("/"):
        return ctx.err(path, 'must start with "/"')
    return text


_UPSTREAM: dict[str, Reader] = {
    "endpoints": list_of(host_port(), nonempty_=True),
    "health_check": health_check,
    "connect_timeout": positive_duration,
    "idle_timeout": positive_duration,
    "max_connections": at_least(1, integer=True),
    "max_pending": at_least(0, integer=True),
    "queue_timeout": duration,
    "max_requests": at_least(1, integer=True),
}


def upstreams(ctx: Ctx, value: object, path: str) -> Any:
    """`{name: {endpoints: [...], ...}}` in YAML order -> tuple of Upstream."""
    if not isinstance(value, dict):
        return ctx.err(path, "must be a mapping of name -> {endpoints: [host:port, ...]}")
    if not value:
        return ctx.err(path, "must define at least one upstream")
    out = []
    for key, body in value.items():
        p = join(path, key)
        if name(ctx, key, p) is BAD:
            continue
        ctx.upstreams.append(str(key))
        u = build(ctx, body, p, s.Upstream, _UPSTREAM, ["endpoints"], {"name": str(key)})
        if u is not BAD:
            out.append(u)
    return tuple(out)


# ---- canaries ------------------------------------------------------------------------------


def metric_check(ctx: Ctx, value: object, path: str) -> Any:
    readers = {
        "name": nonempty,
        "min": number,
        "max": number,
        "query": nonempty,
        "interval": _duration_text,
    }
    mc = build(ctx, value, path, s.MetricCheck, readers, ["name"])
    if mc is BAD or not mc.name:
        return mc
    if mc.name not in s.BUILTIN_METRICS and not mc.query:
        builtin = ", ".join(s.BUILTIN_METRICS)
        return ctx.err(
            join(path, "name"),
            f'unknown metric "{mc.name}" needs a query '
            f"(builtin: {builtin}){did_you_mean(mc.name, s.BUILTIN_METRICS)}",
        )
    if mc.min is None and mc.max is None:
        return ctx.err(path, "needs min or max")
    if mc.min is not None and mc.max is not None and mc.min > mc.max:
        return ctx.err(join(path, "min"), f"min ({mc.min:g}) is greater than max ({mc.max:g})")
    return mc


def _duration_text(ctx: Ctx, value: object, path: str) -> Any:
    return value if duration(ctx, value, path) is not BAD else BAD


def _url(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not re.match(r"^https?://[^\s/]+", text):
        return ctx.err(path, "must be an http:// or https:// URL")
    return text


def webhook(ctx: Ctx, value: object, path: str) -> Any:
    readers = {
        "name": nonempty,
        "type": one_of(*s.WEBHOOK_TYPES),
        "url": _url,
        "timeout": positive_duration,
        "metadata": str_map(nonempty, string),
    }
    return build(ctx, value, path, s.Webhook, readers, ["name", "type", "url"])


def alert(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"type": one_of("slack", "dingtalk", "generic"), "url": _url, "name": string}
    return build(ctx, value, path, s.Alert, readers, ["type", "url"])


def provider(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"type": one_of("builtin", "prometheus"), "address": _url}
    p = build(ctx, value, path, s.Provider, readers)
    if p is not BAD and p.type == "prometheus" and not p.address:
        return ctx.err(join(path, "address"), "is required with type: prometheus")
    return p


def step(ctx: Ctx, value: object, path: str) -> Any:
    """`{weight: N}` | `{match: [...]}` | `{pause: 10m}` | `{pause: {}}` (until resumed)."""
    m = ctx.mapping(value, path, ["weight", "match", "pause"])
    if m is None:
        return BAD
    if len(m) != 1:
        return ctx.err(path, "needs exactly one of weight, match, pause")
    key, raw = next(iter(m.items()))
    p = join(path, key)
    if key == "weight":
        w = percent(ctx, raw, p)
        return w if w is BAD else s.Step(weight=w)
    if key == "match":
        rules = match_list(ctx, raw, p)
        return rules if rules is BAD else s.Step(match=rules)
    if raw == {}:
        return s.Step(pause=math.inf)
    secs = positive_duration(ctx, raw, p)
    return secs if secs is BAD else s.Step(pause=secs)


def _step_weights(ctx: Ctx, value: object, path: str) -> Any:
    ws = list_of(between(0, 100), nonempty_=True)(ctx, value, path)
    if ws is not BAD and any(b <= a for a, b in zip(ws, ws[1:], strict=False)):
        return ctx.err(path, "must be strictly increasing")
    return ws


_ANALYSIS: dict[str, Reader] = {
    "interval": positive_duration,
    "threshold": at_least(1, integer=True),
    "max_weight": between(0, 100),
    "step_weight": between(0, 100),
    "step_weights": _step_weights,
    "steps": list_of(step, nonempty_=True),
    "iterations": at_least(1, integer=True),
    "match": match_list,
    "min_requests": at_least(0, integer=True),
    "on_no_data": one_of("hold", "fail"),
    "progress_deadline": positive_duration,
    "judge": one_of("threshold", "compare"),
    "confidence": between(50, 99.999),
    "dry_run": boolean,
    "metrics": list_of(metric_check),
    "webhooks": list_of(webhook),
    "alerts": list_of(alert),
    "provider": provider,
}


def analysis(ctx: Ctx, value: object, path: str) -> Any:
    a = build(ctx, value, path, s.Analysis, _ANALYSIS)
    if a is BAD:
        return BAD
    given = value if isinstance(value, dict) else {}
    if "steps" in given and "step_weights" in given:
        ctx.err(join(path, "steps"), "steps and step_weights are mutually exclusive")
    if a.max_weight <= 0:
        ctx.err(join(path, "max_weight"), "must be > 0")
    if "step_weight" in given and a.step_weight <= 0:
        ctx.err(join(path, "step_weight"), "must be > 0")
    names = [w.name for w in a.webhooks]
    for i, n in enumerate(names):
        if n in names[:i]:
            ctx.err(f"{path}.webhooks[{i}].name", f'duplicate webhook name "{n}"')
    return a


def goal(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"name": nonempty, "path": _abs_path, "method": _method}
    return build(ctx, value, path, s.Goal, readers, ["name", "path"])


_CANARY: dict[str, Reader] = {
    "name": name,
    "route": string,
    "stable": subset_ref,
    "canary": subset_ref,
    "mode": one_of("canary", "blue-green", "ab"),
    "revision": string,
    "analysis": analysis,
    "goals": list_of(goal),
}


def canary(ctx: Ctx, value: object, path: str) -> Any:
    c = build(ctx, value, path, s.Canary, _CANARY, ["name", "route", "stable", "canary"])
    if c is BAD:
        return BAD
    if c.route and c.route not in ctx.routes:
        hint = did_you_mean(c.route, list(ctx.routes))
        ctx.err(join(path, "route"), f'unknown route "{c.route}"{hint}')
    elif c.route:
        _check_in_route(ctx, c, ctx.routes[c.route], path)
    if c.stable and c.stable == c.canary:
        ctx.err(join(path, "canary"), f'must differ from stable ("{c.stable}")')
    given = value.get("analysis") if isinstance(value, dict) else None
    _check_mode(ctx, c, given if isinstance(given, dict) else {}, join(path, "analysis"))
    return c


def _check_in_route(ctx: Ctx, c: s.Canary, r: s.Route, path: str) -> None:
    """The routing table shifts weights among a route's destinations only."""
    subsets = [d.subset for d in r.destinations]
    for key in ("stable", "canary"):
        subset = getattr(c, key)
        if subset and subset in ctx.upstreams and subset not in subsets:
            ctx.err(
                join(path, key),
                f'"{subset}" is not a destination of route "{r.name}" '
                f"(add {{destination: {subset}, weight: 0}})",
            )


def _check_mode(ctx: Ctx, c: s.Canary, given: dict, path: str) -> None:
    """Flagger's rules: blue-green and ab run `iterations`, canary shifts weights."""
    if c.mode == "ab" and not c.analysis.match:
        ctx.err(join(path, "match"), "is required with mode: ab (who sees the canary)")
    if c.mode != "canary":
        for key in ("steps", "step_weights", "step_weight", "max_weight"):
            if key in given:
                ctx.err(join(path, key), f"applies to mode: canary only (mode is {c.mode})")
    if c.mode != "ab" and "match" in given:
        ctx.err(join(path, "match"), "applies to mode: ab only (use steps: [{match: ...}])")


def canaries(ctx: Ctx, value: object, path: str) -> Any:
    parsed = list_of(canary)(ctx, value, path)
    if parsed is BAD:
        return BAD
    seen: dict[str, str] = {}
    for i, c in enumerate(parsed):
        if c.name in seen:
            ctx.err(f"{path}[{i}].name", f'duplicate canary name "{c.name}"')
        elif c.route in seen.values():
            ctx.err(f"{path}[{i}].route", f'route "{c.route}" already has a canary')
        seen[c.name] = c.route
    return parsed


# ---- top level -----------------------------------------------------------------------------


def access_log(ctx: Ctx, value: object, path: str) -> Any:
    if value is False:
        return None
    if not isinstance(value, str) or not value:
        return ctx.err(path, "must be stdout, a file path, or false")
    return value


def _env_name(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not _ENV.match(text):
        return ctx.err(path, "must be an environment variable name")
    return text


_LIMITS: dict[str, Reader] = {
    "header_timeout": positive_duration,
    "body_timeout": positive_duration,
    "keepalive_timeout": duration,
    "keepalive_requests": at_least(1, integer=True),
    "max_connections": at_least(1, integer=True),
    "drain_timeout": duration,
    "trusted_hops": at_least(0, integer=True),
}

_TOP: dict[str, Reader] = {
    "listen": host_port(0),
    "admin": lambda c, v, p: build(
        c, v, p, s.Admin, {"listen": host_port(0), "token_env": _env_name}
    ),
    "access_log": access_log,
    "metrics": lambda c, v, p: build(c, v, p, s.Metrics, {"compat": _compat}),
    "identity": lambda c, v, p: build(
        c, v, p, s.Identity, {"region_header": header_name, "user_header": header_name}
    ),
    "limits": lambda c, v, p: build(c, v, p, s.Limits, _LIMITS),
    "upstreams": upstreams,
    "routes": routes,
    "canaries": canaries,
}


def _compat(ctx: Ctx, value: object, path: str) -> Any:
    items = list_of(one_of("istio", "http"))(ctx, value, path)
    return items if items is BAD else frozenset(items)


def validate(data: object, lines: Lines = None) -> tuple[s.Config | None, list[Error]]:
    """Parse a YAML document (plain dicts/lists/scalars) into a Config; report every error.

    `lines` (path -> line, mapping or function) only orders the errors as they appear
    in the file; the caller formats them.
    """
    ctx = Ctx()
    if data is None:
        data = {}
    if isinstance(data, dict):  # `x-` keys hold YAML anchors to reuse (as docker compose)
        data = {k: v for k, v in data.items() if not str(k).startswith("x-")}
    m = ctx.mapping(data, "", list(_TOP), ["listen", "upstreams", "routes"])
    if m is None:
        return None, ctx.errors
    kw = fields(ctx, m, "", _TOP)  # dict order: upstreams before routes before canaries
    if ctx.errors:
        return None, _ordered(ctx.errors, lines)
    kw.setdefault("canaries", ())
    return s.Config(**kw), []


def _ordered(errors: list[Error], lines: Lines) -> list[Error]:
    if lines is None:
        return errors
    find = lines if callable(lines) else lines.get
    return sorted(errors, key=lambda e: find(e[0]) or 0)
