"""A parsed YAML document -> `Config`, with EVERY error reported by its path.

Pure: no YAML, no I/O. `validate(data)` returns `(config, [])` or `(None, errors)`
where each error is `(path, message)` and a path reads `routes[1].route[0].weight`.
`proxy.config.load` turns paths into `file:line:` prefixes. The rules follow
Istio, Flagger and argo-rollouts validation: an unknown key, a wrong type or a
dangling reference is an error, never a silent default.

This module reads the top level and `upstreams:`; the field readers live in
`proxy.config.fields`, routes in `validate_routes` and canaries in `validate_canaries`.
The one exception to "no I/O": the files an upstream's `tls` names are loaded (as the data
plane will load them) so that a missing or broken one is an error by path, not a 502 later.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
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
    boolean,
    build,
    duration,
    env_name,
    header_name,
    host_port,
    join,
    list_of,
    name,
    nonempty,
    one_of,
    parse_duration,
    positive_duration,
    read_keys,
    record,
    refine,
    set_of,
    string,
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

_SNI = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_TLS: dict[str, Reader] = {
    "sni": refine(string, _SNI.match, '"{}" is not a host name'),
    "ca": nonempty,
    "verify": boolean,
    "cert": nonempty,
    "key": nonempty,
}


def _loads(
    ctx: Ctx, path: str, file: str, load: Callable[[ssl.SSLContext], object], what: str
) -> None:
    try:
        load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    except ssl.SSLError as exc:  # an OSError too: read first
        ctx.err(path, f"not {what}: {exc}")
    except OSError as exc:
        ctx.err(path, f"cannot read: {file}: {exc.strerror or exc}")


def _read(file: str) -> None:
    with open(file, "rb"):
        pass


def upstream_tls(ctx: Ctx, value: object, path: str) -> Any:
    """`tls: {sni, ca, verify, cert, key}` -> UpstreamTLS; its files must load."""
    t = build(ctx, value, path, s.UpstreamTLS, _TLS)
    if t is BAD:
        return BAD
    if bool(t.cert) != bool(t.key):
        given, missing = ("cert", "key") if t.cert else ("key", "cert")
        return ctx.err(join(path, missing), f"is required with {given} (a client certificate)")
    errors = len(ctx.errors)
    if t.ca:
        _loads(
            ctx, join(path, "ca"), t.ca, lambda c: c.load_verify_locations(t.ca), "a PEM CA bundle"
        )
    if t.cert:
        _loads(ctx, join(path, "cert"), t.cert, lambda c: _read(t.cert), "")  # which one is missing
        _loads(ctx, join(path, "key"), t.key, lambda c: _read(t.key), "")
        if len(ctx.errors) == errors:
            pair = "a PEM certificate and key that match"
            _loads(
                ctx, join(path, "cert"), t.cert, lambda c: c.load_cert_chain(t.cert, t.key), pair
            )
    return BAD if len(ctx.errors) > errors else t


_UPSTREAM: dict[str, Reader] = {
    "endpoints": list_of(host_port(), nonempty_=True),
    "health_check": record(s.HealthCheck, _HEALTH_CHECK),
    "connect_timeout": positive_duration,
    "idle_timeout": positive_duration,
    "max_connections": at_least(1, integer=True),
    "max_pending": at_least(0, integer=True),
    "queue_timeout": duration,
    "max_requests": at_least(1, integer=True),
    "tls": upstream_tls,
}


def _answers_only(doc: object) -> bool:
    """Every route redirects or answers directly: such a config needs no upstream."""
    routes = doc.get("routes") if isinstance(doc, dict) else None
    return (
        isinstance(routes, list)
        and bool(routes)
        and all(
            isinstance(r, dict) and "route" not in r and ("redirect" in r or "direct_response" in r)
            for r in routes
        )
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
    "tunnel_idle_timeout": positive_duration,
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
