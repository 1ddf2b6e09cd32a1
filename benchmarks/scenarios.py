"""The benchmark scenarios: what wrk (or `ws_load`) sends, and which proxy feature each turns on.

Every proxy gets the same split (95/5 between two upstreams, `v1` and `v2`) and the same
feature for a scenario; `configs.py` spells that feature in each proxy's own language.
"""

from __future__ import annotations

from dataclasses import dataclass

ROUTES = 50  # header-match routes in the `header-routes` scenario
TENANT_HEADER = "x-tenant"
USER_HEADER = "user-id"
STICKY_COOKIE = "version"
WS_INFLIGHT = 4  # WebSocket messages outstanding per connection (pipelined, not lock-step)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str  # one line for the report
    path: str = "/"
    headers: tuple[str, ...] = ()  # wrk -H values
    lua: str = ""  # wrk script body (request side); the common `done` is appended
    routes: bool = False  # 50 header-match routes ahead of the split route
    hash_split: bool = False  # split by hash of the user-id header
    sticky: bool = False  # sticky cookie
    compat: bool = False  # our Istio/http compatible metric series
    access_log: bool = False
    ours_only: bool = False
    tls: bool = False  # clients speak TLS to the proxy (same certificate for every proxy)
    ws_size: int = 0  # WebSocket echo with this payload per message (ws_load, not wrk)

    @property
    def websocket(self) -> bool:
        return self.ws_size > 0

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


UPLOAD_LUA = """
wrk.method = "POST"
wrk.path = "/upload"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
"""

# A new user id per request: the hash lookup cannot be served from one cached answer.
HASH_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["user-id"] = "user-" .. (n % 100000)})
end
"""

# wrk's own --latency table stops at p99; this prints p99.9 and the counters we parse.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50=%d p99=%d p999=%d max=%d "
    .. "connect=%d read=%d write=%d status=%d timeout=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("small", "GET /, 2-byte answer, keep-alive"),
    Scenario("64k", "GET of a 64 KiB answer", path="/64k"),
    Scenario("upload", "POST of a 1 MiB body", lua=UPLOAD_LUA),
    Scenario("conn-close", "new connection per request", headers=("Connection: close",)),
    Scenario(
        "header-routes",
        f"{ROUTES} header-match routes, request matches the last",
        headers=(f"{TENANT_HEADER}: tenant-{ROUTES - 1}",),
        routes=True,
    ),
    Scenario(
        "hash",
        "95/5 split by hash of a user-id header, new id each request",
        lua=HASH_LUA,
        hash_split=True,
    ),
    Scenario(
        "sticky",
        "sticky cookie, returning client",
        headers=(f"Cookie: {STICKY_COOKIE}=v1",),
        sticky=True,
    ),
    Scenario(
        "metrics-compat", "Istio + http compatible metric series on", compat=True, ours_only=True
    ),
    Scenario("access-log", "access log to a file", access_log=True),
    Scenario("tls", "GET / over TLS (ECDSA P-256), keep-alive", tls=True),
    Scenario(
        "tls-new-conn",
        "GET / over TLS, new connection per request (wrk resumes the session)",
        headers=("Connection: close",),
        tls=True,
    ),
    Scenario(
        "websocket",
        f"WebSocket echo through upgraded tunnels, 64 KiB messages, {WS_INFLIGHT} in flight",
        path="/ws",
        ws_size=64 * 1024,
    ),
    Scenario(
        "websocket-64b",
        f"WebSocket echo through upgraded tunnels, 64 B messages, {WS_INFLIGHT} in flight",
        path="/ws",
        ws_size=64,
    ),
)

QUICK = ("small", "header-routes")


def by_name(names: tuple[str, ...]) -> list[Scenario]:
    """Scenarios in the order given; an unknown name is an error, not a silent skip."""
    index = {s.name: s for s in SCENARIOS}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(index)}")
    return [index[n] for n in names]


def wrk_script(s: Scenario) -> str:
    return s.lua + DONE_LUA
