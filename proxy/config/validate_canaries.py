"""Validation of `canaries:`: the analysis (steps, metrics, webhooks) and its references.

Pure: no YAML, no I/O. Readers follow `proxy.config.fields`. Canaries are read after
routes, so a canary's route must be in `ctx.routes` and its stable and canary subsets
must be destinations of that route: the routing table shifts weight among those only.
"""

from __future__ import annotations

import math
from typing import Any

from proxy.config import schema as s
from proxy.config.fields import (
    BAD,
    Ctx,
    Reader,
    abs_path,
    at_least,
    between,
    boolean,
    build,
    did_you_mean,
    duration,
    join,
    list_of,
    method,
    name,
    nonempty,
    number,
    one_of,
    percent,
    positive_duration,
    record,
    report_repeats,
    str_map,
    string,
    url,
)
from proxy.config.validate_routes import match_list, subset_ref

# ---- analysis ------------------------------------------------------------------------------


def _duration_text(ctx: Ctx, value: object, path: str) -> Any:
    """A valid duration kept as written: the provider's query language reads it."""
    return value if duration(ctx, value, path) is not BAD else BAD


_METRIC: dict[str, Reader] = {
    "name": nonempty,
    "min": number,
    "max": number,
    "query": nonempty,
    "interval": _duration_text,
}


def metric_check(ctx: Ctx, value: object, path: str) -> Any:
    mc = build(ctx, value, path, s.MetricCheck, _METRIC, ["name"])
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


_WEBHOOK: dict[str, Reader] = {
    "name": nonempty,
    "type": one_of(*s.WEBHOOK_TYPES),
    "url": url,
    "timeout": positive_duration,
    "metadata": str_map(nonempty, string),
}
webhook = record(s.Webhook, _WEBHOOK, ["name", "type", "url"])
_ALERT: dict[str, Reader] = {
    "type": one_of("slack", "dingtalk", "generic"),
    "url": url,
    "name": string,
}
alert = record(s.Alert, _ALERT, ["type", "url"])
_PROVIDER: dict[str, Reader] = {"type": one_of("builtin", "fleet", "prometheus"), "address": url}


def provider(ctx: Ctx, value: object, path: str) -> Any:
    p = build(ctx, value, path, s.Provider, _PROVIDER)
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
    "close_tunnels_on_rollback": boolean,
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
    report_repeats(ctx, [w.name for w in a.webhooks], join(path, "webhooks"), "webhook")
    return a


# ---- canaries ------------------------------------------------------------------------------

goal = record(s.Goal, {"name": nonempty, "path": abs_path, "method": method}, ["name", "path"])
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
    """The canary list: unique names, and at most one canary per route."""
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
