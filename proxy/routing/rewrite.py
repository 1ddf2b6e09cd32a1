"""Redirects, rewrites and direct responses: what a route does instead of, or to, the
request it forwards (SPEC §6). Pure functions over plain strings.

Rules kept here:
- the matched prefix is the longest `path: {prefix: P}` of the route's match rules that the
  path starts with; an exact path match is the whole path; a route without a path match
  matched the prefix "/";
- replacing a prefix keeps the rest of the path, with one "/" between the two parts
  (`/old` -> `/new`: `/old/a` becomes `/new/a`; `/old` -> `/`: `/old/a` becomes `/a`);
- the query string is kept by every rewrite and redirect; the fragment never reaches us;
- a redirect keeps what it does not set: scheme, host (without its port), port, path. A
  new scheme without a port takes the scheme's port; the Location omits a port that is the
  scheme's own (80 for http, 443 for https), as the Gateway API asks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from proxy.config.schema import MatchRule, Redirect, Rewrite
from proxy.routing.regex import compile_sub

DEFAULT_PORTS = {"http": 80, "https": 443}


def path_prefixes(rules: tuple[MatchRule, ...]) -> tuple[str, ...]:
    """The path prefixes a route matches on, longest first ("/" when a rule has no path)."""
    out = set()
    for rule in rules or (MatchRule(),):
        p = rule.path
        if p is None:
            out.add("/")
        elif p.kind == "prefix":
            out.add(p.value)
    return tuple(sorted(out, key=len, reverse=True))


def matched_prefix(prefixes: tuple[str, ...], path: str) -> str:
    """The part of `path` the route's match took as its prefix (the whole path when it
    matched by exact path or regex)."""
    for p in prefixes:
        if path.startswith(p):
            return p
    return path


def replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """`prefix` (which `path` starts with) replaced by `replacement`. A prefix's trailing
    "/" stays with the rest (`/old/` -> `/new`: `/old/` becomes `/new/`, as the Gateway
    API's ReplacePrefixMatch), and one "/" joins the two parts."""
    prefix = prefix.rstrip("/")
    rest = path[len(prefix) :]
    if not prefix and rest == "/":
        rest = ""  # the prefix "/" took the whole path "/"
    if replacement.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    return (replacement + rest) or "/"


def split_target(target: str) -> tuple[str, str]:
    """`/a/b?x=1` -> ("/a/b", "?x=1")."""
    path, sep, query = target.partition("?")
    return path, sep + query


@dataclass(frozen=True, slots=True)
class PathRewrite:
    """A compiled `rewrite:` of one route; `host` is the Host sent upstream, or None."""

    prefix: str | None
    path: str | None
    sub: Callable[[str], str] | None
    host: str | None

    def target(self, target: str, prefixes: tuple[str, ...]) -> str:
        """The request target sent upstream."""
        path, query = split_target(target)
        if self.path is not None:
            path = self.path
        elif self.prefix is not None:
            path = replace_prefix(path, matched_prefix(prefixes, path), self.prefix)
        elif self.sub is not None:
            path = self.sub(path) or "/"
        return path + query


def compile_rewrite(rw: Rewrite) -> PathRewrite:
    sub = compile_sub(rw.regex, rw.substitution or "") if rw.regex is not None else None
    return PathRewrite(rw.prefix, rw.path, sub, rw.host)


def split_host(authority: str) -> tuple[str, int | None]:
    """`Shop.Example.com:8080` -> ("shop.example.com", 8080); `[::1]:80` -> ("[::1]", 80)."""
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1:
            host, rest = authority[: end + 1], authority[end + 1 :]
            port = int(rest[1:]) if rest[1:].isdigit() else None
    elif authority.count(":") == 1:
        h, _, p = authority.partition(":")
        host, port = h, (int(p) if p.isdigit() else None)
    return host.lower().rstrip("."), port


def redirect_location(
    rd: Redirect,
    scheme: str,
    authority: str,
    listener_port: int,
    target: str,
    prefixes: tuple[str, ...],
) -> str:
    """The Location of a redirect for a request to `scheme://authority target` that came
    in on `listener_port`."""
    host, port = split_host(authority)
    new_scheme = rd.scheme or scheme
    if rd.port is not None:
        new_port = rd.port
    elif rd.scheme is not None:
        new_port = DEFAULT_PORTS.get(rd.scheme, listener_port)
    else:
        new_port = port if port is not None else listener_port
    if rd.host is not None:
        host = rd.host
    path, query = split_target(target)
    if rd.path is not None:
        path = rd.path
    elif rd.prefix is not None:
        path = replace_prefix(path, matched_prefix(prefixes, path), rd.prefix)
    shown = "" if DEFAULT_PORTS.get(new_scheme) == new_port else f":{new_port}"
    return f"{new_scheme}://{host}{shown}{path}{query}"
