"""What a route does besides picking a version (SPEC §6), as the base of an exchange.

- A redirect or direct-response route answers itself: no upstream is contacted. The answer
  is counted like the other answers the proxy makes (404 `no_route`, 503 `no_destination`):
  `observe(route, service, version="", status)` and one access-log line with version "".
- A rewrite changes only the forwarded request: its target (`PathRewrite.target`) and, with
  `rewrite.host`, the Host sent upstream. Metrics, explain and the access log's `path` keep
  the request as received; the log line adds `"rewritten": {"path", "host"}`.
- Failover (`failover: connect`): when the version's pool has no usable endpoint, or the
  connection is refused, and no byte of the request ever reached an upstream, the request
  goes to the next destination of the route's failover order with a usable endpoint
  (`rules.failover_to`). The version left behind is still counted as failed: one
  `observe(route, service, that version, 503 or 502, seconds so far)` - the answer it would
  have had (503 `no_healthy_upstream`, 502 `upstream_connect_refused`) - and one
  `upstream_errors_total{version, reason=no_healthy|connect}`; the request's own answer is
  counted for the version that served it. The response carries
  `x-canaryproxy-failover: <from>-><to>`, and so does the access-log line (`"failover"`).

The decisions live in `proxy.dataplane.rules` and `proxy.routing.rewrite`; this is their I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from proxy.dataplane.errors import ERRORS
from proxy.dataplane.heads import answer_head, forward_policy, policy_for, request_head
from proxy.dataplane.rules import (
    FAILOVER_FIELD,
    close_after_error,
    failover_chain,
    failover_to,
    must_close,
)
from proxy.dataplane.stream import ResponseStream
from proxy.headers import Header
from proxy.routing.rewrite import redirect_location

if TYPE_CHECKING:
    from proxy import headers as hdr
    from proxy.config.schema import DirectResponse, Redirect
    from proxy.dataplane.upconn import Endpoint
    from proxy.routing.rewrite import PathRewrite
    from proxy.routing.route import CompiledRoute

ANSWER: Final = "route_answer"  # Exchange.local of a redirect or direct-response route


class RouteActions(ResponseStream):
    __slots__ = ("subset", "head", "target", "failover")
    subset: str  # the version the request goes to
    head: bytes  # the request's fields as sent upstream (heads.request_head)
    # Set by Exchange (declared here for the type checker).
    route: CompiledRoute | None  # None: no route matched (404)
    body: list[bytes] | None
    upstream_addr: str  # set once a connection was handed over: request bytes went out
    ep: Endpoint
    target: bytes  # the request target sent upstream (rewritten, or the one received)
    failover: str  # "" or the `x-canaryproxy-failover` value, `v2->v1`

    def _attempt(self, fresh: bool) -> None:
        raise NotImplementedError  # Exchange._attempt

    # --- redirect and direct response ------------------------------------------------------
    def _answer(self) -> None:
        """Answer for a redirect or direct-response route (Exchange.start, `local` ANSWER)."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        req = self.req
        self.close_after = self.close_after or close_after_error(
            ANSWER, self.req_done, self._must_close()
        )
        if route.redirect is not None:
            status, fields, body = self._redirect(route.redirect)
        else:
            assert route.direct is not None
            status, fields, body = _direct(route.direct)
        head = answer_head(
            status, fields, len(body), policy_for(route, ""), req.http10, self.close_after
        )
        self.status = status
        self.client.write(head if req.method == b"HEAD" or status in (204, 304) else head + body)
        self._finish(status)

    def _redirect(self, rd: Redirect) -> tuple[int, list[Header], bytes]:
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        host = next((v for lname, _, v in self.req.headers if lname == b"host"), None)
        authority = host.decode("latin-1") if host else self.client.local_authority()
        location = redirect_location(
            rd,
            self.client.listening.scheme,
            authority,
            self.client.listening.port,
            self.req.target.decode("latin-1"),
            route.prefixes,
        )
        return rd.status, [(b"location", b"Location", location.encode("latin-1"))], b""

    def _must_close(self) -> bool:
        """`rules.must_close` for a proxy-made answer (it has a length) on this connection."""
        client = self.client
        return must_close(
            self.req.keep_alive,
            False,
            self.seq,
            client.limits.keepalive_requests,
            client.server.draining,
            client.closing,
            len(client.queue),
        )

    # --- rewrite -------------------------------------------------------------------------------
    def _rewrite(self, rw: PathRewrite) -> hdr.Policy:
        """Set the forwarded target and the header policy of a rewriting route."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        req = self.req
        received = req.target.decode("latin-1")
        target = rw.target(received, route.prefixes)
        if target != received:
            self.target = target.encode("latin-1")
        if rw.host is not None:
            req.has_host = True  # the rewritten Host goes, not the endpoint's (HTTP/1.0)
        self.policy = policy = forward_policy(route, self.subset, rw.host, self.failover)
        return policy

    # --- failover ------------------------------------------------------------------------------
    def _fail_over(self, reason: str) -> bool:
        """Go to another destination after `reason` if `rules.failover_to` allows it."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        order = route.failover.get(self.subset, ()) if route.failover else ()
        if not order:
            return False
        pools = self.client.server.pools
        usable = [s for s in order if (p := pools.pool(s)) is not None and p.usable()]
        tried = self.failover.split("->") if self.failover else (self.subset,)
        sent = bool(self.upstream_addr)
        to = failover_to(reason, sent, self.body is not None, order, tried, usable)
        if to is None:
            return False
        self._count_failed(reason)
        self.failover = failover_chain(self.failover, self.subset, to)
        pool = pools.pool(to)
        assert pool is not None  # `to` is one of `usable`
        self.subset, self.pool = to, pool
        host = route.rewrite.host if route.rewrite is not None else None
        self.policy = policy = forward_policy(route, to, host, self.failover)
        self.head = request_head(self.req, policy)
        self._attempt(fresh=False)
        return True

    def _count_failed(self, reason: str) -> None:
        """The version left behind is counted as failed (module docstring)."""
        route = self.route
        assert route is not None  # routed (prepare): see `local`
        metrics = self.client.server.metrics
        if metrics is None:
            return
        status, _, label = ERRORS[reason]
        if label is not None:
            metrics.upstream_error(self.subset, label)
        seconds = self.loop.time() - self.t0
        metrics.observe(route.name, route.service, self.subset, status, seconds)

    def _failover_field(self) -> bytes:
        """The failover field of a proxy-made error after a failover (else b"")."""
        if not self.failover:
            return b""
        return f"{FAILOVER_FIELD}: {self.failover}\r\n".encode("latin-1")


def _direct(dr: DirectResponse) -> tuple[int, list[Header], bytes]:
    fields = [(n.lower().encode("latin-1"), n.encode("latin-1"), v.encode()) for n, v in dr.headers]
    return dr.status, fields, dr.body.encode()
