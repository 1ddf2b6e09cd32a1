"""Admin API (SPEC §3) and dashboard on their own port, default 127.0.0.1:9901.

Security, after Envoy's admin guidance: loopback by default (app.py refuses a public
address without a token), a bearer token compared in constant time on everything but
the probe and scrape endpoints, mutations only by POST/PUT with a JSON body, CR/LF
refused in every value, and one audit log line per mutation.

The handlers only parse and check input; every change goes through the `Controller`
(proxy.control), which validates against the running config and changes nothing on error.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from proxy.store import Conflict, StoreDown

audit = logging.getLogger("canaryproxy.audit")
MAX_BODY = 1024 * 1024
# "/" is the static dashboard page: it holds no state, asks the user for the token and
# sends it with every API call, so a browser (which cannot add a bearer header to a page
# load) can open it. Everything it shows comes from /api/v1/*, which needs the token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})
AUDIT_RESULT = web.RequestKey("audit_result", str)
AUDIT_BODY = web.RequestKey("audit_body", str)
VERBS = ("start", "promote", "abort", "pause", "resume")
DASHBOARD = os.path.join(os.path.dirname(__file__), "dashboard.html")
_FALLBACK_PAGE = (
    "<!doctype html><title>canaryproxy</title><h1>canaryproxy</h1>"
    '<p>See <a href="/api/v1/status">/api/v1/status</a> and <a href="/metrics">/metrics</a>.</p>'
)


class BadInput(ValueError):
    """Input the API refuses with 400; the message says what is wrong."""


class NotFound(LookupError):
    """A route, subset, canary or revision that does not exist: 404."""


class Controller(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...

    async def persisted(self) -> None: ...

    def token(self) -> str: ...
    def ready(self) -> tuple[bool, str]: ...
    def status(self) -> dict: ...
    def series(self) -> dict: ...  # the shape is documented at ProxyMetrics.series
    async def reload_async(self) -> dict: ...
    async def set_weights(self, route: str, weights: dict[str, float]) -> dict: ...
    async def switch(self, route: str, subset: str) -> dict: ...
    async def canary_action(self, name: str, verb: str) -> dict: ...
    def history(self) -> list[dict]: ...
    async def undo(self, to_revision: int | None) -> dict: ...
    def explain(self, req: dict) -> dict: ...


# -- input checks (pure) -------------------------------------------------------------


def check_no_crlf(value: Any, where: str = "body") -> None:
    """Refuse CR, LF and NUL anywhere: they would forge log lines or header values."""
    if isinstance(value, str):
        if any(c in value for c in "\r\n\0"):
            raise BadInput(f"{where}: CR, LF and NUL are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_no_crlf(k, where)
            check_no_crlf(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_no_crlf(v, f"{where}[{i}]")


def parse_weights(body: Any) -> dict[str, float]:
    """`{"v1": 90, "v2": 10}` -> weights; finite numbers >= 0, no bools. `{"v2": 0}` is
    valid (v2 0 %, the rest share 100 %): the all-zero check follows the percent rule."""
    if not isinstance(body, dict) or not body:
        raise BadInput('expected a JSON object of subset weights, e.g. {"v1": 90, "v2": 10}')
    out: dict[str, float] = {}
    for subset, w in body.items():
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise BadInput(f"weight of {subset!r} must be a number, got {json.dumps(w)}")
        if not math.isfinite(w) or w < 0:
            raise BadInput(f"weight of {subset!r} must be a finite number >= 0, got {w}")
        out[subset] = float(w)
    return out


def parse_switch(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("to"), str) or not body["to"]:
        raise BadInput('expected {"to": "<subset>"}')
    return str(body["to"])


def parse_undo(body: Any) -> int | None:
    if body is None or body == {}:
        return None
    if not isinstance(body, dict) or set(body) - {"to_revision"}:
        raise BadInput('expected {"to_revision": N} or an empty body')
    n = body.get("to_revision")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BadInput("to_revision must be a revision number >= 1")
    return n


async def read_json(request: web.Request) -> Any:
    """The body as JSON (None if empty); over 1 MiB or not JSON -> BadInput."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadInput(f"body over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadInput(f"body over {MAX_BODY} bytes")
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not valid JSON: {exc}") from None
    check_no_crlf(data)
    # json.dumps escapes control characters, so the audit line stays one line
    request[AUDIT_BODY] = json.dumps(data, separators=(",", ":"))[:200]
    return data


def explain_args(body: dict) -> tuple[str, str, dict[str, str], dict[str, str], str]:
    """The explain request body -> RoutingTable.explain arguments."""
    method, path = body.get("method", "GET"), body.get("path", "/")
    headers, cookies = body.get("headers") or {}, body.get("cookies") or {}
    client_ip = body.get("client_ip", "127.0.0.1")
    if not isinstance(method, str) or not isinstance(path, str) or not path.startswith("/"):
        raise BadInput('"method" must be a string and "path" a string starting with /')
    for name, d in (("headers", headers), ("cookies", cookies)):
        if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
            raise BadInput(f'"{name}" must be an object of strings')
    if not isinstance(client_ip, str):
        raise BadInput('"client_ip" must be a string')
    lower = {k.lower(): v for k, v in headers.items()}
    return method.upper(), path, lower, dict(cookies), client_ip


def readiness(
    weights: dict[str, dict[str, float]],
    pools: list[dict],
    probed: frozenset[str] = frozenset(),
    passed: frozenset[tuple[str, str]] = frozenset(),
) -> tuple[bool, str]:
    """Ready while every route has a subset that takes traffic and has a usable endpoint.

    A canary that is down does not take the whole gateway out of its load balancer; a
    route whose every live subset is down does. An endpoint of a subset with a health
    check (`probed`) counts only once a probe has passed (`passed`), as Envoy warms a
    cluster on its first health-check round: until then nobody knows it answers.
    """
    usable = {
        p["name"]
        for p in pools
        for e in p["endpoints"]
        if e["healthy"]
        and not e["ejected"]
        and (p["name"] not in probed or (p["name"], e["address"]) in passed)
    }
    for route, by_subset in weights.items():
        live = [s for s, w in by_subset.items() if w > 0]
        if live and not any(s in usable for s in live):
            return False, f"route {route}: no healthy endpoint in subset {', '.join(live)}"
    return True, "ok"


# -- middlewares ---------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadInput as exc:
        return _error(400, str(exc))
    except NotFound as exc:
        return _error(404, str(exc.args[0]) if exc.args else "not found")
    except Conflict as exc:
        return _error(409, str(exc))
    except StoreDown as exc:
        return _error(503, str(exc), {"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error(exc.status, exc.reason, keep)


def auth_middleware(get_token: Callable[[], str]) -> Any:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = get_token()
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            expected = "Bearer " + token
            if not hmac.compare_digest(given.encode(), expected.encode()):
                request[AUDIT_RESULT] = "unauthorized"
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return auth


def _host_part(hostport: str) -> str:
    host = hostport.rsplit("]", 1)[0].lstrip("[") if hostport.startswith("[") else hostport
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def browser_guard(get_token: Callable[[], str]) -> Any:
    """Keep web pages out: a loopback admin API is still reachable from a browser.

    Cross-origin mutations (an `Origin` that is not this host) get 403: that stops
    CSRF from any page. Without a token, a Host that is a DNS name other than
    localhost gets 403: that stops DNS rebinding, where evil.example resolves to
    127.0.0.1 and the page becomes "same origin".
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method in ("POST", "PUT") and origin is not None:
            if urlsplit(origin).netloc != request.host:
                request[AUDIT_RESULT] = "cross-origin"
                return _error(403, "cross-origin requests may not change routing state")
        if not get_token() and not _is_ip_or_localhost(_host_part(request.host)):
            request[AUDIT_RESULT] = "bad-host"
            return _error(403, "without a token the admin API answers only to IP or localhost")
        return await handler(request)

    return guard


def _audit(request: web.Request, status: int, result: str) -> None:
    peer = request.remote or "?"
    # repr() keeps any control character in the path on one line.
    audit.info(
        "peer=%s method=%s path=%r body=%s status=%d result=%s",
        peer, request.method, request.rel_url.raw_path, request.get(AUDIT_BODY, "-"), status,
        result,
    )  # fmt: skip


@web.middleware
async def audit_mutations(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in ("POST", "PUT") or request.path == "/api/v1/explain":
        return await handler(request)
    resp = await handler(request)
    result = request.get(AUDIT_RESULT, "ok" if resp.status < 400 else "refused")
    _audit(request, resp.status, result)
    return resp


# -- handlers ------------------------------------------------------------------------


class AdminAPI:
    """The aiohttp application serving SPEC §3 for one Controller."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl

    @web.middleware
    async def durable(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a mutation only once its revision is on disk."""
        resp = await handler(request)
        if request.method in ("POST", "PUT") and resp.status < 400:
            await self.ctl.persisted()
        return resp

    def build(self) -> web.Application:
        app = web.Application(
            middlewares=[
                audit_mutations,
                errors_as_json,
                browser_guard(self.ctl.token),
                auth_middleware(self.ctl.token),
                self.durable,
            ],
            client_max_size=MAX_BODY,
        )
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/", self.dashboard)
        r.add_get("/api/v1/status", self.status)
        r.add_get("/api/v1/series", self.series)
        r.add_post("/api/v1/reload", self.reload)
        r.add_put("/api/v1/routes/{route}/weights", self.weights)
        r.add_post("/api/v1/routes/{route}/switch", self.switch)
        r.add_post("/api/v1/canaries/{name}/{verb}", self.canary)
        r.add_get("/api/v1/history", self.history)
        r.add_post("/api/v1/undo", self.undo)
        r.add_post("/api/v1/explain", self.explain)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok, why = self.ctl.ready()
        return web.json_response({"ready": ok, "reason": why}, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.ctl.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def dashboard(self, request: web.Request) -> web.Response:
        try:
            with open(DASHBOARD, encoding="utf-8") as f:
                page = f.read()
        except OSError:
            page = _FALLBACK_PAGE
        return web.Response(text=page, content_type="text/html")

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.ctl.status())

    async def series(self, request: web.Request) -> web.Response:
        return web.json_response(self.ctl.series())

    async def reload(self, request: web.Request) -> web.Response:
        await read_json(request)
        out = await self.ctl.reload_async()
        if out.get("error"):
            request[AUDIT_RESULT] = "rejected"
            return web.json_response(out, status=400)
        return web.json_response(out)

    async def weights(self, request: web.Request) -> web.Response:
        route = _param(request, "route")
        weights = parse_weights(await read_json(request))
        return web.json_response(await self.ctl.set_weights(route, weights))

    async def switch(self, request: web.Request) -> web.Response:
        route = _param(request, "route")
        subset = parse_switch(await read_json(request))
        return web.json_response(await self.ctl.switch(route, subset))

    async def canary(self, request: web.Request) -> web.Response:
        name, verb = _param(request, "name"), _param(request, "verb")
        if verb not in VERBS:
            raise NotFound(f"unknown canary action {verb!r}; one of {', '.join(VERBS)}")
        await read_json(request)
        return web.json_response(await self.ctl.canary_action(name, verb))

    async def history(self, request: web.Request) -> web.Response:
        return web.json_response({"revisions": self.ctl.history()})

    async def undo(self, request: web.Request) -> web.Response:
        return web.json_response(await self.ctl.undo(parse_undo(await read_json(request))))

    async def explain(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadInput('expected {"method", "path", "headers", "cookies", "client_ip"}')
        return web.json_response(self.ctl.explain(body))


def _param(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    check_no_crlf(value, name)
    return value
