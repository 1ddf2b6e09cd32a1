"""Validation of a route's gateway keys (SPEC §6) and of `listeners:`.

Pure but for one edge: a TLS listener's certificate files are loaded (proxy.dataplane.tls)
so that a bad file is reported by its path. `hosts`, `listeners`, `redirect`, `rewrite`,
`direct_response`, `mirror` (one mapping or a list) and `failover`; the rule that a route
has exactly one of `route`, `redirect` and `direct_response` is checked by `check_action`.
"""

from __future__ import annotations

import re
from typing import Any

from proxy.config import schema as s
from proxy.config.fields import (
    BAD,
    Ctx,
    Reader,
    build,
    header_name,
    header_value,
    host_port,
    integer_,
    join,
    list_of,
    name,
    one_of,
    percent,
    record,
    refine,
    regex,
    report_repeats,
    status_code,
    str_map,
    string,
)

_port = refine(integer_, lambda v: 1 <= v <= 65535, "must be a port between 1 and 65535")

# One DNS label: letters, digits, '-' and '_' (seen in real service names), not at the ends.
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def host_pattern(ctx: Ctx, value: object, path: str) -> Any:
    """`shop.example.com` or `*.example.com` -> lower-case; no port, no scheme, no path."""
    text = string(ctx, value, path)
    if text is BAD:
        return BAD
    host = text.strip().lower().rstrip(".")
    bare = host[2:] if host.startswith("*.") else host
    if ":" in host and not host.startswith("["):
        return ctx.err(path, f'"{text}": a host has no port (the port is ignored when matching)')
    if not bare or not _HOSTNAME.match(bare) or "*" in bare:
        return ctx.err(
            path, f'"{text}" is not a host name; expected e.g. shop.example.com or *.example.com'
        )
    return host


def hosts(ctx: Ctx, value: object, path: str) -> Any:
    parsed = list_of(host_pattern, nonempty_=True)(ctx, value, path)
    if parsed is not BAD:
        report_repeats(ctx, list(parsed), path, "host")
    return parsed


def listener_ref(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and text not in ctx.listeners:
        known = ", ".join(ctx.listeners)
        return ctx.err(path, f'unknown listener "{text}"; listeners: {known}')
    return text


def _scheme(ctx: Ctx, value: object, path: str) -> Any:
    return one_of("http", "https")(ctx, value, path)


def _abs_path(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not text.startswith("/"):
        return ctx.err(path, 'must start with "/"')
    if text is not BAD and any(c in text for c in "?# \t\r\n"):
        return ctx.err(path, "must be a path only (no query, fragment or spaces)")
    return text


def _host_only(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is not BAD and not _HOSTNAME.match(text.lower()):
        return ctx.err(path, f'"{text}" is not a host name')
    return BAD if text is BAD else text.lower()


_REDIRECT: dict[str, Reader] = {
    "scheme": _scheme,
    "host": _host_only,
    "port": _port,
    "path": _abs_path,
    "prefix": _abs_path,
    "status": refine(
        integer_, lambda v: v in s.REDIRECT_CODES, "must be one of 301, 302, 303, 307, 308"
    ),
}


def redirect(ctx: Ctx, value: object, path: str) -> Any:
    r = build(ctx, value, path, s.Redirect, _REDIRECT)
    if r is not BAD and r.path is not None and r.prefix is not None:
        return ctx.err(path, "has path and prefix: give one (path replaces all of it)")
    return r


_REWRITE: dict[str, Reader] = {
    "prefix": _abs_path,
    "path": _abs_path,
    "regex": regex,
    "substitution": string,
    "host": _host_only,
}


def rewrite(ctx: Ctx, value: object, path: str) -> Any:
    rw = build(ctx, value, path, s.Rewrite, _REWRITE)
    if rw is BAD:
        return BAD
    given = [k for k in ("prefix", "path", "regex") if getattr(rw, k) is not None]
    if len(given) > 1:
        return ctx.err(path, f"has {' and '.join(given)}: give one way to rewrite the path")
    if (rw.regex is None) != (rw.substitution is None):
        return ctx.err(path, "regex and substitution go together")
    if not given and rw.host is None:
        return ctx.err(path, "needs prefix, path, regex (with substitution) or host")
    return rw


direct_response = record(
    s.DirectResponse,
    {"status": status_code, "body": string, "headers": str_map(header_name, header_value)},
    ["status"],
)


def mirrors(subset_ref: Reader) -> Reader:
    """`mirror:` as one mapping or a list of them -> a tuple of Mirror."""
    one = record(s.Mirror, {"destination": subset_ref, "percent": percent}, ["destination"])

    def read(ctx: Ctx, value: object, path: str) -> Any:
        if isinstance(value, dict):
            m = one(ctx, value, path)
            return BAD if m is BAD else (m,)
        parsed = list_of(one, nonempty_=True)(ctx, value, path)
        if parsed is not BAD:
            report_repeats(ctx, [m.destination for m in parsed], path, "mirror destination")
        return parsed

    return read


def failover(ctx: Ctx, value: object, path: str) -> Any:
    """`connect` or `off`; YAML reads a bare `off` as false, which means off too."""
    if value is False:
        return "off"
    return one_of(*s.FAILOVER)(ctx, value, path)


def gateway_keys(subset_ref: Reader) -> dict[str, Reader]:
    """The readers of a route's gateway keys; `subset_ref` reads an upstream's name."""
    return {
        "hosts": hosts,
        "listeners": list_of(listener_ref, nonempty_=True),
        "redirect": redirect,
        "rewrite": rewrite,
        "direct_response": direct_response,
        "mirror": mirrors(subset_ref),
        "failover": failover,
    }


_ROUTE_ONLY = ("split", "sticky", "mirror", "retries", "rewrite", "preview", "failover")


def check_action(ctx: Ctx, m: dict, path: str) -> None:
    """Exactly one of route, redirect, direct_response; what needs a backend needs `route`."""
    given = [k for k in ("route", "redirect", "direct_response") if k in m]
    if not given:
        ctx.err(join(path, "route"), "is required")  # or redirect, or direct_response
        return
    if len(given) > 1:
        both = " and ".join(given)
        ctx.err(path, f"needs exactly one of route, redirect, direct_response (has {both})")
        return
    if given[0] != "route":
        for key in _ROUTE_ONLY:
            if key in m:
                ctx.err(join(path, key), f"applies to a forwarded request; {given[0]} answers it")


# ---- listeners -----------------------------------------------------------------------------


def _cert_pair(ctx: Ctx, value: object, path: str) -> Any:
    from proxy.dataplane.tls import pair_error  # loads the files: the one I/O of validation

    pair = build(ctx, value, path, s.CertPair, {"cert": string, "key": string}, ["cert", "key"])
    if pair is BAD or not pair.cert or not pair.key:
        return BAD
    error = pair_error(pair)
    return pair if error is None else ctx.err(join(path, error[0]), error[1])


def _ca_file(ctx: Ctx, value: object, path: str) -> Any:
    from proxy.dataplane.tls import ca_error

    text = string(ctx, value, path)
    error = None if text is BAD else ca_error(text)
    return text if error is None else ctx.err(path, error)


def _min_version(ctx: Ctx, value: object, path: str) -> Any:
    return one_of("1.2", "1.3")(ctx, str(value) if isinstance(value, float) else value, path)


_TLS: dict[str, Reader] = {
    "certificates": list_of(_cert_pair, nonempty_=True),
    "min_version": _min_version,
    "client_ca": lambda ctx, v, p: None if v is None else _ca_file(ctx, v, p),
}


def listener(ctx: Ctx, value: object, path: str) -> Any:
    readers: dict[str, Reader] = {
        "name": name,
        "listen": host_port(0),
        "tls": record(s.ListenerTls, _TLS, ["certificates"]),
    }
    return build(ctx, value, path, s.Listener, readers, ["name", "listen"])


def listeners(ctx: Ctx, value: object, path: str) -> Any:
    """`listeners:` -> tuple of Listener; names unique and recorded in `ctx.listeners`."""
    parsed = list_of(listener, nonempty_=True)(ctx, value, path)
    if parsed is BAD:
        return BAD
    report_repeats(ctx, [x.name for x in parsed], path, "listener")
    report_repeats(ctx, [x.listen for x in parsed], path, "listen address")
    ctx.listeners = [x.name for x in parsed]
    return parsed
