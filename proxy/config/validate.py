"""A parsed YAML document -> `Config`, with EVERY error reported by its path.

Pure: no YAML, no I/O. `validate(data)` returns `(config, [])` or `(None, errors)`
where each error is `(path, message)` and a path reads `routes[1].route[0].weight`.
`proxy.config.load` turns paths into `file:line:` prefixes. The rules follow
Istio, Flagger and argo-rollouts validation: an unknown key, a wrong type or a
dangling reference is an error, never a silent default.

This module reads the top level and `upstreams:`; the field readers live in
`proxy.config.fields`, routes in `validate_routes` and canaries in `validate_canaries`.
"""

from __future__ import annotations

from typing import Any

from proxy.config import schema as s
from proxy.config.fields import (
    BAD,
    Ctx,
    Error,
    Lines,
    Reader,
    abs_path,
    at_least,
    build,
    duration,
    env_name,
    header_name,
    host_port,
    join,
    list_of,
    name,
    one_of,
    parse_duration,
    positive_duration,
    read_keys,
    record,
    set_of,
)
from proxy.config.validate_canaries import canaries
from proxy.config.validate_gateway import listeners
from proxy.config.validate_routes import routes

__all__ = ["Error", "Lines", "parse_duration", "validate"]

# ---- upstreams -----------------------------------------------------------------------------

_HEALTH_CHECK: dict[str, Reader] = {
    "path": abs_path,
    "interval": positive_duration,
    "timeout": positive_duration,
    "healthy": at_least(1, integer=True),
    "unhealthy": at_least(1, integer=True),
}

_UPSTREAM: dict[str, Reader] = {
    "endpoints": list_of(host_port(), nonempty_=True),
    "health_check": record(s.HealthCheck, _HEALTH_CHECK),
    "connect_timeout": positive_duration,
    "idle_timeout": positive_duration,
    "max_connections": at_least(1, integer=True),
    "max_pending": at_least(0, integer=True),
    "queue_timeout": duration,
    "max_requests": at_least(1, integer=True),
}


def _answers_only(doc: object) -> bool:
    """Every route redirects or answers directly: such a config needs no upstream."""
    routes = doc.get("routes") if isinstance(doc, dict) else None
    return isinstance(routes, list) and bool(routes) and all(
        isinstance(r, dict) and "route" not in r and ("redirect" in r or "direct_response" in r)
        for r in routes
    )


def upstreams(ctx: Ctx, value: object, path: str) -> Any:
    """`{name: {endpoints: [...], ...}}` in YAML order -> tuple of Upstream."""
    if not isinstance(value, dict):
        return ctx.err(path, "must be a mapping of name -> {endpoints: [host:port, ...]}")
    if not value and not _answers_only(ctx.document):
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


# ---- top level -----------------------------------------------------------------------------


def access_log(ctx: Ctx, value: object, path: str) -> Any:
    if value is False:
        return None
    if not isinstance(value, str) or not value:
        return ctx.err(path, "must be stdout, a file path, or false")
    return value


_LIMITS: dict[str, Reader] = {
    "header_timeout": positive_duration,
    "body_timeout": positive_duration,
    "keepalive_timeout": duration,
    "keepalive_requests": at_least(1, integer=True),
    "max_connections": at_least(1, integer=True),
    "drain_timeout": duration,
    "trusted_hops": at_least(0, integer=True),
}

_IDENTITY: dict[str, Reader] = {"region_header": header_name, "user_header": header_name}

# dict order is read order: upstreams before routes before canaries, which refer back
_TOP: dict[str, Reader] = {
    "listen": host_port(0),
    "listeners": listeners,
    "admin": record(s.Admin, {"listen": host_port(0), "token_env": env_name}),
    "access_log": access_log,
    "metrics": record(s.Metrics, {"compat": set_of(one_of("istio", "http"), nonempty_=False)}),
    "identity": record(s.Identity, _IDENTITY),
    "limits": record(s.Limits, _LIMITS),
    "upstreams": upstreams,
    "routes": routes,
    "canaries": canaries,
}


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
    if isinstance(data, dict) and ("listen" in data) == ("listeners" in data):
        both = "listen" in data
        ctx.err("listen", "give listen (one address) or listeners (a list), not both" if both
                else "is required")  # fmt: skip
    ctx.document = data
    m = ctx.mapping(data, "", list(_TOP), ["upstreams", "routes"])
    if m is None:
        return None, ctx.errors
    kw = read_keys(ctx, m, "", _TOP)
    if ctx.errors:
        return None, _ordered(ctx.errors, lines)
    kw.setdefault("canaries", ())
    if "listeners" in kw:
        kw["listen"] = kw["listeners"][0].listen
    return s.Config(**kw), []


def _ordered(errors: list[Error], lines: Lines) -> list[Error]:
    if lines is None:
        return errors
    find = lines if callable(lines) else lines.get
    return sorted(errors, key=lambda e: find(e[0]) or 0)
