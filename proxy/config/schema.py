"""The validated configuration: frozen dataclasses, no I/O.

`proxy.config.validate` turns a YAML mapping into a `Config`; everything else in
the program reads only these types. Durations are float seconds, weights floats,
percentages floats in 0..100. Tuples and frozensets keep every value hashable and
immutable, so a `Config` can be shared between the event loop and a thread that
builds a routing table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MatchKind = Literal["exact", "prefix", "regex", "present", "absent"]
SplitBy = Literal["random", "header", "cookie", "source_ip"]
CanaryMode = Literal["canary", "blue-green", "ab"]
Judge = Literal["threshold", "compare"]
OnNoData = Literal["hold", "fail"]

WEBHOOK_TYPES = (
    "pre-rollout",
    "rollout",
    "confirm-rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
    "event",
)
BUILTIN_METRICS = ("request-success-rate", "request-duration", "error-rate")
RETRY_ON = ("connect-failure", "reset", "502", "503", "504")


@dataclass(frozen=True)
class StringMatch:
    """One string predicate: `{exact|prefix|regex: V}` or `{present|absent: true}`.

    `regex` is a full match in RE2 syntax (as Istio/Envoy).
    """

    kind: MatchKind
    value: str = ""


@dataclass(frozen=True)
class MatchRule:
    """One item of a `match:` list. All set keys must hold (AND); None/empty = not checked.

    Header names are lower-cased; `method` values upper-cased.
    """

    path: StringMatch | None = None
    method: frozenset[str] | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    cookies: tuple[tuple[str, StringMatch], ...] = ()
    query: tuple[tuple[str, StringMatch], ...] = ()
    source_ip: tuple[str, ...] = ()  # CIDR strings, validated
    region: frozenset[str] | None = None
    users: frozenset[str] | None = None


@dataclass(frozen=True)
class HeaderOps:
    """Header edits for one direction: set (replace), add (append), remove (names)."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeaderPolicy:
    request: HeaderOps = field(default_factory=HeaderOps)
    response: HeaderOps = field(default_factory=HeaderOps)


@dataclass(frozen=True)
class Destination:
    subset: str
    weight: float = 1.0
    headers: HeaderPolicy = field(default_factory=HeaderPolicy)


@dataclass(frozen=True)
class Split:
    """How a route picks among its destinations. `random` ignores `name`."""

    by: SplitBy = "random"
    name: str = ""


@dataclass(frozen=True)
class Sticky:
    cookie: str
    max_age: int = 86400


@dataclass(frozen=True)
class Mirror:
    destination: str
    percent: float = 100.0


@dataclass(frozen=True)
class Retries:
    attempts: int = 0  # extra attempts after the first
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset({"connect-failure"})


@dataclass(frozen=True)
class FaultAbort:
    status: int
    percent: float = 100.0


@dataclass(frozen=True)
class FaultDelay:
    fixed: float
    percent: float = 100.0


@dataclass(frozen=True)
class Fault:
    abort: FaultAbort | None = None
    delay: FaultDelay | None = None


@dataclass(frozen=True)
class Preview:
    """Requests carrying `header: value` reach the route's idle subset (weight 0)."""

    header: str = "x-canary-preview"
    value: str = "1"


REDIRECT_CODES = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Redirect:
    """Answer with a redirect; each part left None keeps the request's own (SPEC §6)."""

    scheme: str | None = None  # http | https
    host: str | None = None
    port: int | None = None
    path: str | None = None  # the whole path
    prefix: str | None = None  # replaces the matched path prefix
    status: int = 302


@dataclass(frozen=True)
class Rewrite:
    """How the forwarded request differs from the one received (never in metrics/logs)."""

    prefix: str | None = None  # replaces the matched path prefix
    path: str | None = None  # replaces the whole path
    regex: str | None = None  # RE2 syntax, with `substitution` (\\1 for groups)
    substitution: str | None = None
    host: str | None = None  # the Host header sent upstream


@dataclass(frozen=True)
class DirectResponse:
    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


FAILOVER = ("connect", "off")


@dataclass(frozen=True)
class Route:
    """One entry of `routes:`. Exactly one of destinations (`route:`), `redirect` and
    `direct_response` is set; `destinations` is () for the other two."""

    name: str
    destinations: tuple[Destination, ...]
    match: tuple[MatchRule, ...] = ()  # empty: matches every request
    split: Split = field(default_factory=Split)
    sticky: Sticky | None = None
    mirror: tuple[Mirror, ...] = ()  # `mirror:` as one mapping or a list
    timeout: float = 15.0  # response-header timeout of the whole exchange
    retries: Retries = field(default_factory=Retries)
    fault: Fault | None = None
    headers: HeaderPolicy = field(default_factory=HeaderPolicy)
    max_body: int = 10 * 1024 * 1024
    service: str = ""  # destination_service label; "" means the route name
    preview: Preview | None = None
    hosts: tuple[str, ...] = ()  # lower-case; "*.x" a suffix wildcard; empty: any host
    listeners: tuple[str, ...] = ()  # listener names; empty: every listener
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    rewrite: Rewrite | None = None
    failover: str = "connect"  # connect | off


@dataclass(frozen=True)
class HealthCheck:
    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    healthy: int = 1  # consecutive passes to mark healthy
    unhealthy: int = 3  # consecutive failures to mark unhealthy


@dataclass(frozen=True)
class UpstreamTLS:
    """HTTPS to a Subset's endpoints. "" means: no such file (system CAs, no client cert)."""

    sni: str = ""  # "" means the endpoint's host when it is a name
    ca: str = ""  # a PEM bundle of the CAs to trust; "" means the system's
    verify: bool = True  # False: any certificate is accepted (warned about at load)
    cert: str = ""  # a client certificate (mTLS), with `key`
    key: str = ""


@dataclass(frozen=True)
class Upstream:
    """A Subset: one version of the service, reachable at `endpoints` (host:port)."""

    name: str
    endpoints: tuple[str, ...]
    health_check: HealthCheck | None = None
    connect_timeout: float = 2.0
    idle_timeout: float = 30.0  # below the usual upstream keep-alive timeouts
    max_connections: int = 1024
    max_pending: int = 1024
    queue_timeout: float = 1.0
    max_requests: int = 1024  # in flight
    tls: UpstreamTLS | None = None  # None: plain HTTP


@dataclass(frozen=True)
class MetricCheck:
    """A check of the analysis. Builtin names need no query; others need `query`."""

    name: str
    min: float | None = None
    max: float | None = None
    query: str = ""  # PromQL template with {{ route }} {{ version }} {{ interval }} {{ service }}
    interval: str = ""  # the PromQL range; "" means the analysis interval


@dataclass(frozen=True)
class Webhook:
    name: str
    type: str  # one of WEBHOOK_TYPES
    url: str
    timeout: float = 10.0
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Alert:
    type: Literal["slack", "dingtalk", "generic"]
    url: str
    name: str = ""


@dataclass(frozen=True)
class Provider:
    type: Literal["builtin", "fleet", "prometheus"] = "builtin"  # fleet: every replica (--store)
    address: str = ""


@dataclass(frozen=True)
class Step:
    """One entry of `steps:`. Exactly one of weight, match, pause is set.

    pause: seconds, or `float("inf")` for `{pause: {}}` (until resumed).
    """

    weight: float | None = None
    match: tuple[MatchRule, ...] | None = None
    pause: float | None = None


@dataclass(frozen=True)
class Goal:
    name: str
    path: str
    method: str = ""  # "" = any method


@dataclass(frozen=True)
class Analysis:
    interval: float = 60.0
    threshold: int = 5
    max_weight: float = 50.0
    step_weight: float = 10.0
    step_weights: tuple[float, ...] = ()
    steps: tuple[Step, ...] = ()
    iterations: int = 10  # blue-green and ab
    match: tuple[MatchRule, ...] = ()  # ab: who sees the canary
    min_requests: int = 20
    on_no_data: OnNoData = "hold"
    progress_deadline: float = 600.0
    judge: Judge = "threshold"
    confidence: float = 98.0
    dry_run: bool = False
    # a rollback also closes the canary version's open tunnels (WebSocket): a long-lived
    # tunnel would otherwise keep its users on the failed version
    close_tunnels_on_rollback: bool = False
    metrics: tuple[MetricCheck, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    alerts: tuple[Alert, ...] = ()
    provider: Provider = field(default_factory=Provider)


@dataclass(frozen=True)
class Canary:
    name: str
    route: str
    stable: str
    canary: str
    mode: CanaryMode = "canary"
    revision: str = ""  # bump to start a new rollout by reload
    analysis: Analysis = field(default_factory=Analysis)
    goals: tuple[Goal, ...] = ()


@dataclass(frozen=True)
class Admin:
    listen: str = "127.0.0.1:9901"
    token_env: str = "CANARYPROXY_TOKEN"


@dataclass(frozen=True)
class Metrics:
    compat: frozenset[str] = frozenset()  # "istio", "http"


@dataclass(frozen=True)
class Identity:
    region_header: str = "x-region"
    user_header: str = "user-id"


@dataclass(frozen=True)
class Limits:
    """Client-side limits and timeouts (nginx/Envoy parity, see README)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000
    max_connections: int = 10000
    drain_timeout: float = 30.0
    trusted_hops: int = 0
    tunnel_idle_timeout: float = 3600.0  # an upgraded (WebSocket) tunnel with no byte either way


@dataclass(frozen=True)
class CertPair:
    cert: str  # PEM file: the certificate (and its chain)
    key: str  # PEM file: its private key


@dataclass(frozen=True)
class ListenerTls:
    """TLS termination: SNI picks a certificate by its names, the first is the default."""

    certificates: tuple[CertPair, ...]
    min_version: str = "1.2"  # "1.2" | "1.3"
    client_ca: str | None = None  # a CA bundle: client certificates required (mTLS)


@dataclass(frozen=True)
class Listener:
    name: str
    listen: str
    tls: ListenerTls | None = None


@dataclass(frozen=True)
class Config:
    """`listen` is the first listener's address (the only one without `listeners:`)."""

    listen: str
    upstreams: tuple[Upstream, ...]
    routes: tuple[Route, ...]
    admin: Admin = field(default_factory=Admin)
    access_log: str | None = "stdout"  # None = off; "stdout" or a file path
    metrics: Metrics = field(default_factory=Metrics)
    identity: Identity = field(default_factory=Identity)
    limits: Limits = field(default_factory=Limits)
    canaries: tuple[Canary, ...] = ()
    listeners: tuple[Listener, ...] = ()  # empty: one listener "default" on `listen`

    def all_listeners(self) -> tuple[Listener, ...]:
        return self.listeners or (Listener("default", self.listen),)

    def upstream(self, name: str) -> Upstream | None:
        for u in self.upstreams:
            if u.name == name:
                return u
        return None

    def route(self, name: str) -> Route | None:
        for r in self.routes:
            if r.name == name:
                return r
        return None
