"""Match predicates: a `MatchRule` compiled once into a tuple of small checks.

Rules kept here:
- a rule holds when every check holds (AND); a route's rules are OR'ed by the caller;
  a rule with no checks matches every request;
- the path is the raw request target up to `?`; prefix is a plain string prefix (as Istio);
- header names are lower-case; a missing header fails every kind but `absent`;
- cookies and the query string are parsed only when a check reads them, once per request;
- regex is a full match (RE2 syntax, compiled by `proxy.routing.regex`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from proxy.config.schema import Identity, MatchRule, StringMatch
from proxy.routing.regex import compile_full

StrPred = Callable[[str | None], bool]
IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_cookies(header: str | None) -> dict[str, str]:
    """Cookie header -> {name: value}; the first occurrence of a name wins (RFC 6265 5.4)."""
    out: dict[str, str] = {}
    if not header:
        return out
    for part in header.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not name or name in out:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[name] = value
    return out


def parse_query(qs: str) -> dict[str, str]:
    """Query string -> {name: value}, percent-decoded; the first occurrence wins."""
    out: dict[str, str] = {}
    if not qs:
        return out
    if "%" in qs or "+" in qs:
        pairs = parse_qsl(qs, keep_blank_values=True)
    else:  # nothing to decode: a plain split is 4x cheaper than parse_qsl
        pairs = []
        for part in qs.split("&"):
            if part:
                name, _, value = part.partition("=")
                pairs.append((name, value))
    for name, value in pairs:
        out.setdefault(name, value)
    return out


def parse_ip(text: str) -> IpAddr | None:
    """Client address -> ip object; IPv4-mapped IPv6 becomes IPv4; junk -> None."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Request:
    """One request as the routing engine sees it. Cookies, query and ip parse lazily."""

    __slots__ = ("method", "path", "query_string", "headers", "client_ip", "_c", "_q", "_ip")

    def __init__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        client_ip: str = "",
        cookies: Mapping[str, str] | None = None,
    ) -> None:
        self.method = method
        path, _, self.query_string = target.partition("?")
        self.path = path
        self.headers = headers
        self.client_ip = client_ip
        self._c: dict[str, str] | None = dict(cookies) if cookies is not None else None
        self._q: dict[str, str] | None = None
        self._ip: IpAddr | None | bool = False  # False: not parsed yet

    def cookies(self) -> dict[str, str]:
        if self._c is None:
            self._c = parse_cookies(self.headers.get("cookie"))
        return self._c

    def query(self) -> dict[str, str]:
        if self._q is None:
            self._q = parse_query(self.query_string)
        return self._q

    def ip(self) -> IpAddr | None:
        if self._ip is False:
            self._ip = parse_ip(self.client_ip)
        return self._ip  # type: ignore[return-value]


def with_cookies(req: Request, extra: Mapping[str, str]) -> Request:
    """Cookies from the header, then `extra` on top (the explain API passes them apart)."""
    merged = {**parse_cookies(req.headers.get("cookie")), **extra}
    req._c = merged
    return req


def string_pred(sm: StringMatch) -> StrPred:
    """One `{exact|prefix|regex|present|absent}` predicate over an optional string."""
    v = sm.value
    if sm.kind == "exact":
        return lambda s: s == v
    if sm.kind == "prefix":
        return lambda s: s is not None and s.startswith(v)
    if sm.kind == "regex":
        full = compile_full(v)
        return lambda s: s is not None and full(s)
    if sm.kind == "present":
        return lambda s: s is not None
    if sm.kind == "absent":
        return lambda s: s is None
    raise ValueError(f"unknown match kind {sm.kind!r}")


Check = Callable[[Request], bool]


def _label(what: str, sm: StringMatch) -> str:
    """Human label of a check for explain: `headers[user-id] exact "t1"`."""
    return (
        f"{what} {sm.kind}"
        if sm.kind in ("present", "absent")
        else f'{what} {sm.kind} "{sm.value}"'
    )


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A compiled `MatchRule`: (label, check) pairs, all of which must hold."""

    rule: MatchRule
    checks: tuple[tuple[str, Check], ...]

    def matches(self, req: Request) -> bool:
        for _, check in self.checks:
            if not check(req):
                return False
        return True

    def first_failure(self, req: Request) -> str | None:
        """Label of the first check that fails, or None when the rule matches."""
        for label, check in self.checks:
            if not check(req):
                return label
        return None


def _path_check(sm: StringMatch) -> Check:
    if sm.kind == "exact":
        v = sm.value
        return lambda r: r.path == v
    if sm.kind == "prefix":
        v = sm.value
        return lambda r: r.path.startswith(v)
    p = string_pred(sm)
    return lambda r: p(r.path)


def _header_check(name: str, sm: StringMatch) -> Check:
    if sm.kind == "exact":
        v = sm.value
        return lambda r: r.headers.get(name) == v
    p = string_pred(sm)
    return lambda r: p(r.headers.get(name))


def _cookie_check(name: str, sm: StringMatch) -> Check:
    p = string_pred(sm)
    return lambda r: p(r.cookies().get(name))


_PLAIN: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _query_check(name: str, sm: StringMatch) -> Check:
    p = string_pred(sm)
    if not set(name) <= _PLAIN:
        return lambda r: p(r.query().get(name))
    absent = p(None)

    def check(r: Request) -> bool:
        qs = r.query_string
        # A plain name absent from an undecoded query string is absent: skip parsing.
        if name not in qs and "%" not in qs:
            return absent
        return p(r.query().get(name))

    return check


_IP_CACHE_MAX: Final = 4096


def ipv4_int(text: str) -> int | None:
    """Dotted-quad IPv4 -> int, 5x cheaper than `ipaddress`; None for anything else
    (IPv6, leading zeros, junk), which then takes the full parse."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not (p.isascii() and p.isdigit()) or len(p) > 3 or (p[0] == "0" and len(p) > 1):
            return None
        v = int(p)
        if v > 255:
            return None
        n = n << 8 | v
    return n


def _v4_prefixes(net: ipaddress.IPv4Network) -> tuple[str, ...]:
    """Text prefixes that every canonical dotted quad inside `net` starts with."""
    octets = [str(o) for o in net.network_address.packed]
    full, rem = divmod(net.prefixlen, 8)
    if rem == 0:
        return (".".join(octets[:full]) + ("." if full < 4 else ""),) if full else ("",)
    first = int(octets[full])
    tail = "." if full < 3 else ""
    head = "".join(o + "." for o in octets[:full])
    return tuple(f"{head}{v}{tail}" for v in range(first, first + (1 << (8 - rem))))


def _ip_check(cidrs: tuple[str, ...]) -> Check:
    nets: tuple[IpNet, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    v4nets = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v4 = tuple((int(n.network_address), int(n.netmask)) for n in v4nets)
    prefixes = tuple(p for n in v4nets for p in _v4_prefixes(n))
    # Most clients are outside the CIDRs: one `startswith` rules a dotted quad out; a
    # candidate is then parsed; IPv6 (":" in it) takes the full parse. Answers for the
    # costly paths are cached per address (clients repeat); the cache is bounded.
    seen: dict[str, bool] = {}

    def parsed(r: Request) -> bool:
        n = ipv4_int(r.client_ip)
        if n is not None:
            return any(n & mask == net for net, mask in v4)
        ip = r.ip()
        return ip is not None and any(ip in net for net in nets)

    def check(r: Request) -> bool:
        text = r.client_ip
        if ":" not in text and not text.startswith(prefixes):
            return False
        hit = seen.get(text)
        if hit is None:
            hit = parsed(r)
            if len(seen) >= _IP_CACHE_MAX:
                seen.clear()
            seen[text] = hit
        return hit

    return check


def _set_check(header: str, values: frozenset[str]) -> Check:
    # A frozenset keeps a 100,000-user list O(1) per request.
    return lambda r: r.headers.get(header) in values


def _cost(sm: StringMatch, base: int) -> int:
    return 4 if sm.kind == "regex" else base


def compile_rule(rule: MatchRule, identity: Identity) -> CompiledRule:
    """Compile one match item; checks run cheapest first (regexes last) so misses exit early."""
    checks: list[tuple[int, str, Check]] = []
    if rule.method:
        methods = frozenset(m.upper() for m in rule.method)
        checks.append((0, f"method in {sorted(methods)}", lambda r: r.method in methods))
    if rule.path is not None:
        checks.append((_cost(rule.path, 1), _label("path", rule.path), _path_check(rule.path)))
    for name, sm in rule.headers:
        label = _label(f"headers[{name.lower()}]", sm)
        checks.append((_cost(sm, 1), label, _header_check(name.lower(), sm)))
    if rule.region:
        label = f"region ({identity.region_header.lower()}) in {sorted(rule.region)}"
        checks.append((1, label, _set_check(identity.region_header.lower(), rule.region)))
    if rule.users:
        label = f"users ({identity.user_header.lower()}, {len(rule.users)} ids)"
        checks.append((1, label, _set_check(identity.user_header.lower(), rule.users)))
    for name, sm in rule.cookies:
        checks.append((_cost(sm, 2), _label(f"cookies[{name}]", sm), _cookie_check(name, sm)))
    for name, sm in rule.query:
        checks.append((_cost(sm, 2), _label(f"query[{name}]", sm), _query_check(name, sm)))
    if rule.source_ip:
        checks.append((3, f"source_ip in {list(rule.source_ip)}", _ip_check(rule.source_ip)))
    checks.sort(key=lambda c: c[0])  # stable: same-cost checks keep the config's order
    return CompiledRule(rule, tuple((label, check) for _, label, check in checks))


def compile_rules(rules: tuple[MatchRule, ...], identity: Identity) -> tuple[CompiledRule, ...]:
    return tuple(compile_rule(r, identity) for r in rules)


def rules_test(rules: tuple[CompiledRule, ...]) -> Check | None:
    """One callable for a whole match list (OR of ANDs); None when it matches everything.

    Flattened at build time so the common shapes (one item, one condition) cost one call.
    """
    if not rules:
        return None
    if len(rules) == 1:
        checks = tuple(c for _, c in rules[0].checks)
        if len(checks) == 1:
            return checks[0]
        return rules[0].matches
    items = tuple(r.matches for r in rules)

    def any_item(req: Request) -> bool:
        for m in items:
            if m(req):
                return True
        return False

    return any_item


def exact_header_key(rule: MatchRule) -> tuple[str, str] | None:
    """(lower-case header name, value) when the item is one `headers: {name: {exact: v}}`
    condition and nothing else (empty method/region/users sets check nothing); else None."""
    if len(rule.headers) != 1 or rule.path is not None or rule.method:
        return None
    if rule.cookies or rule.query or rule.source_ip or rule.region or rule.users:
        return None
    name, sm = rule.headers[0]
    return (name.lower(), sm.value) if sm.kind == "exact" else None


def exact_header_keys(rules: tuple[MatchRule, ...]) -> tuple[tuple[str, str], ...] | None:
    """The keys of a match list whose every item is an exact-header key (OR of them), for a
    hash lookup in place of the checks; None when any item is anything else, or the list
    is empty (which matches every request)."""
    keys = tuple(exact_header_key(r) for r in rules)
    if not keys or None in keys:
        return None
    return keys  # type: ignore[return-value]


# Per header name: value -> index of the earliest route with that exact-header key.
HeaderIndex = tuple[tuple[str, dict[str, int]], ...]


def build_header_index(keys: Sequence[tuple[tuple[str, str], ...] | None]) -> HeaderIndex:
    """Index the exact-header keys of routes in table order (None: the route is not
    indexed); a (name, value) key shared by several routes keeps the lowest index."""
    by_name: dict[str, dict[str, int]] = {}
    for i, route_keys in enumerate(keys):
        for name, value in route_keys or ():
            by_name.setdefault(name, {}).setdefault(value, i)
    return tuple(by_name.items())


def first_match(rules: tuple[CompiledRule, ...], req: Request) -> int:
    """Index of the first rule that holds; -1 when none does. No rules: 0 (match all)."""
    if not rules:
        return 0
    for i, rule in enumerate(rules):
        if rule.matches(req):
            return i
    return -1
