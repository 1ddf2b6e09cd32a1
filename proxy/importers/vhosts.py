"""Virtual hosts that never fall through: Envoy virtual hosts (Istio) and nginx server blocks
(ingress-nginx).

Our routing follows the Gateway API: a request for `shop.example.com` that matches none of
that host's routes goes on to the wildcard routes, then the routes without `hosts`. Envoy and
nginx pick one virtual host per request and answer 404 inside it. So when a less specific
route could take a named host's leftover requests, that host gets a last route of its own:
`direct_response: {status: 404}`, placed after every route, where only its host reaches it.
"""

from __future__ import annotations

from proxy.importers.common import Doc

NOT_FOUND = {"status": 404, "body": "no route for this host and path\n"}


def _covers(pattern: str, host: str) -> bool:
    """Does the route host `pattern` take requests for `host` (itself a pattern)?"""
    if pattern == host:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern)
    return False


def isolate(routes: list[Doc], taken: set[str]) -> list[Doc]:
    """`routes` plus a 404 route for each host that a less specific route could reach."""
    patterns: list[str] = []
    for r in routes:
        for h in r.get("hosts") or ():
            if h not in patterns:
                patterns.append(h)
    hostless = any(not r.get("hosts") for r in routes)
    out = list(routes)
    for host in patterns:
        if hostless or any(_covers(p, host) for p in patterns):
            name = _name(f"{host.replace('*', 'any')}-not-found", taken)
            out.append({"name": name, "hosts": [host], "direct_response": dict(NOT_FOUND)})
    return out


def _name(base: str, taken: set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name
