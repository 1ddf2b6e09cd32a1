"""Validation of `routes:`: match rules, destinations and the per-route policies.

Pure: no YAML, no I/O. Readers follow `proxy.config.fields`; a destination must name a
declared upstream (`ctx.upstreams`, read before routes) and every valid route is
recorded in `ctx.routes` for the canaries that refer to it.
"""

from __future__ import annotations

from typing import Any

from proxy.config import schema as s
from proxy.config.fields import (
    BAD,
    Ctx,
    Reader,
    at_least,
    build,
    cidr,
    cookie_name,
    did_you_mean,
    duration,
    header_name,
    header_value,
    join,
    list_of,
    method,
    name,
    nonempty,
    one_of,
    percent,
    positive_duration,
    read_keys,
    record,
    regex,
    report_repeats,
    seconds_int,
    set_of,
    status_code,
    str_map,
    string,
)
from proxy.config.validate_gateway import check_action, gateway_keys

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


_named_matches = str_map(header_name, string_match)
_cookie_matches = str_map(nonempty, string_match)
_RULE: dict[str, Reader] = {
    "path": _path_match,
    "method": set_of(method),
    "headers": _named_matches,
    "cookies": _cookie_matches,
    "query": _cookie_matches,
    "source_ip": list_of(cidr, nonempty_=True),
    "region": set_of(nonempty),
    "users": set_of(nonempty),
}

match_rule = record(s.MatchRule, _RULE)


def match_list(ctx: Ctx, value: object, path: str) -> Any:
    """A `match:` list (OR of rules). A single mapping is an error, not a guess."""
    if isinstance(value, dict):
        return ctx.err(path, "must be a list of match rules (put a '-' before the rule)")
    return list_of(match_rule)(ctx, value, path)


# ---- destinations and policies -------------------------------------------------------------


def subset_ref(ctx: Ctx, value: object, path: str) -> Any:
    """The name of a declared upstream."""
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
header_ops = record(s.HeaderOps, _OPS)
header_policy = record(s.HeaderPolicy, {"request": header_ops, "response": header_ops})


def destination(ctx: Ctx, value: object, path: str) -> Any:
    readers = {"destination": subset_ref, "weight": at_least(0), "headers": header_policy}
    m = ctx.mapping(value, path, list(readers), ["destination"])
    if m is None:
        return BAD
    kw = read_keys(ctx, m, path, readers)
    return s.Destination(kw.pop("destination", ""), **kw)


_SPLIT: dict[str, Reader] = {
    "by": one_of("random", "header", "cookie", "source_ip"),
    "name": nonempty,
}


def split(ctx: Ctx, value: object, path: str) -> Any:
    sp = build(ctx, value, path, s.Split, _SPLIT)
    if sp is not BAD and sp.by in ("header", "cookie") and not sp.name:
        return ctx.err(join(path, "name"), f"is required with by: {sp.by}")
    if sp is not BAD and sp.by == "header":
        return s.Split("header", sp.name.lower())
    return sp


sticky = record(s.Sticky, {"cookie": cookie_name, "max_age": seconds_int}, ["cookie"])
_RETRIES: dict[str, Reader] = {
    "attempts": at_least(0, integer=True),
    "per_try_timeout": positive_duration,
    "retry_on": set_of(one_of(*s.RETRY_ON)),
}
retries = record(s.Retries, _RETRIES)
_FAULT: dict[str, Reader] = {
    "abort": record(s.FaultAbort, {"status": status_code, "percent": percent}, ["status"]),
    "delay": record(s.FaultDelay, {"fixed": duration, "percent": percent}, ["fixed"]),
}


def fault(ctx: Ctx, value: object, path: str) -> Any:
    f = build(ctx, value, path, s.Fault, _FAULT)
    if f is not BAD and f.abort is None and f.delay is None and value:
        return BAD  # the inner errors are recorded
    if f is not BAD and f.abort is None and f.delay is None:
        return ctx.err(path, "needs abort or delay")
    return f


preview = record(s.Preview, {"header": header_name, "value": header_value})

# ---- routes --------------------------------------------------------------------------------

_ROUTE: dict[str, Reader] = {
    "name": name,
    "route": list_of(destination, nonempty_=True),
    "match": match_list,
    "split": split,
    "sticky": sticky,
    "timeout": positive_duration,
    "retries": retries,
    "fault": fault,
    "headers": header_policy,
    "max_body": at_least(0, integer=True),
    "service": nonempty,
    "preview": preview,
    **gateway_keys(subset_ref),
}


def route(ctx: Ctx, value: object, path: str) -> Any:
    m = ctx.mapping(value, path, list(_ROUTE), ["name"])
    if m is None:
        return BAD
    check_action(ctx, m, path)
    kw = read_keys(ctx, m, path, _ROUTE)
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
    """The route list; names are unique and recorded in `ctx.routes`."""
    parsed = list_of(route, nonempty_=True)(ctx, value, path)
    if parsed is BAD:
        return BAD
    report_repeats(ctx, [r.name for r in parsed], path, "route")
    for r in parsed:
        ctx.routes.setdefault(r.name, r)
    return parsed
