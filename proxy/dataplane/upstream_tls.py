"""HTTPS to upstreams: one client `SSLContext` per Subset, and what a TLS failure is.

The context is built once when a Subset's pool is built (a reload that leaves the upstream
unchanged keeps it) and serves every connection of that Subset; the health checker builds one
the same way for all its probes of the Subset. Only the server name (SNI and the name
checked) is per connection: `tls.sni`, else the endpoint's host (an IP address is checked
against the certificate's IP entries and sends no SNI). Files changed under an unchanged
config are read at the next change of that upstream or restart.

A failed handshake or verification is `upstream_tls` (502, counted as reason `connect`): it is
not a refused connect, so it neither ejects the endpoint at once nor is retried on another
endpoint (a certificate problem is a configuration problem, the same on every endpoint of a
version); it counts as a gateway failure for passive health.
"""

from __future__ import annotations

import logging
import ssl

from proxy.config.schema import Upstream, UpstreamTLS

log = logging.getLogger(__name__)

UPSTREAM_TLS = "upstream_tls"
ALPN = ["http/1.1"]


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The client context `tls` asks for; raises OSError (ssl.SSLError) if a file fails."""
    ctx = ssl.create_default_context(cafile=tls.ca or None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert:
        ctx.load_cert_chain(tls.cert, tls.key)
    ctx.set_alpn_protocols(ALPN)
    return ctx


def context_for(upstream: Upstream, warn: bool = True) -> ssl.SSLContext | None:
    """The Subset's context, None for plain HTTP. A file that no longer loads (it was checked
    at validation) is logged and gives a context that fails every handshake: `upstream_tls`.
    `warn`: say that `verify: false` checks nothing (the pool does; health checks need not)."""
    tls = upstream.tls
    if tls is None:
        return None
    if warn and not tls.verify:
        log.warning(
            "upstream %s: tls.verify is false: its certificate is not checked", upstream.name
        )
    try:
        return client_context(tls)
    except OSError as exc:
        log.error("upstream %s: tls files do not load: %s", upstream.name, exc)
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and trusts no CA


def server_name(tls: UpstreamTLS, host: str) -> str:
    return tls.sni or host


def tls_failed(exc: BaseException | None) -> bool:
    """A failed handshake or verification: an SSLError, or the server dropping the connection
    mid-handshake (a refused connect is not one). Asked of an HTTPS connection's errors."""
    return isinstance(exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError)
