"""TLS termination on listeners: server contexts, SNI, and certificate reload (the I/O edge).

A `TlsListener` owns the contexts of one listener. The context given to `create_server`
never changes; its `sni_callback` hands each new connection the current context of the
certificate whose names match the server name (the first certificate when none matches,
or when the client sends no name). A reload builds every context aside and swaps one
reference, so open connections keep the context they started with; a file that does not
load keeps the last good contexts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Mapping

from proxy.config.schema import CertPair, ListenerTls

log = logging.getLogger("canaryproxy")

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["http/1.1"]  # no h2: the data plane speaks HTTP/1.1


# ---- loading (validation calls these too) -------------------------------------------------


def pair_error(pair: CertPair) -> tuple[str, str] | None:
    """None if the pair loads; else (which file: "cert" | "key", message)."""
    for which in ("cert", "key"):
        message = _readable(getattr(pair, which))
        if message is not None:
            return which, message
    try:
        cert_names(pair.cert)
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return "cert", "not a PEM certificate"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(pair.cert, pair.key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key", f"does not match the certificate {pair.cert}"
        return "key", f"not a PEM private key for {pair.cert} ({exc.reason or exc.strerror})"
    return None


def ca_error(path: str) -> str | None:
    """None if the CA bundle loads; else the message."""
    message = _readable(path)
    if message is not None:
        return message
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(path)
    except ssl.SSLError as exc:
        return f"not a CA bundle: {exc.reason or exc}"
    return None


def _readable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def cert_names(path: str) -> tuple[str, ...]:
    """The DNS names of a certificate (SAN, else the subject's CN), lower-case."""
    decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]  # stdlib, no dep
    names = [v for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        names = [v for rdn in decoded.get("subject", ()) for k, v in rdn if k == "commonName"]
    return tuple(n.lower().rstrip(".") for n in names)


def name_matches(pattern: str, server_name: str) -> bool:
    """RFC 6125: `*.example.com` matches exactly one label in front of example.com."""
    if pattern.startswith("*."):
        head, _, rest = server_name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == server_name


def build_context(tls: ListenerTls, pair: CertPair) -> ssl.SSLContext:
    """A server context for one certificate; raises OSError/ssl.SSLError if a file is bad."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[tls.min_version]
    ctx.set_alpn_protocols(ALPN)
    ctx.load_cert_chain(pair.cert, pair.key)
    if tls.client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.client_ca)
    return ctx


# ---- one listener's live contexts ---------------------------------------------------------

Picks = tuple[tuple[tuple[str, ...], ssl.SSLContext], ...]  # (names, context), config order
Counter = Callable[[str, str], None]  # (listener, result)


class TlsListener:
    """The contexts of one TLS listener; `context` is what `create_server` is given."""

    def __init__(
        self,
        name: str,
        tls: ListenerTls,
        on_reload: Counter | None = None,
        on_handshake_error: Counter | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.on_reload = on_reload
        self.on_handshake_error = on_handshake_error
        self.picks: Picks = self._build()  # raises at startup: validation checked the files
        self.context = build_context(tls, tls.certificates[0])
        self.context.sni_callback = self._pick
        self.context.sslobject_class = _counted(self)
        self.signature = self.current_signature()

    def _build(self) -> Picks:
        return tuple(
            (cert_names(p.cert), build_context(self.tls, p)) for p in self.tls.certificates
        )

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        picks = self.picks  # one read: a reload swaps the whole tuple
        chosen = picks[0][1]
        if server_name:
            wanted = server_name.lower().rstrip(".")
            for names, ctx in picks:
                if any(name_matches(n, wanted) for n in names):
                    chosen = ctx
                    break
        sslobj.context = chosen

    def current_signature(self) -> tuple:
        """What a changed file changes: (inode, size, mtime) of every certificate file."""
        out: list[tuple[int, int, int] | None] = []
        files = [f for p in self.tls.certificates for f in (p.cert, p.key)]
        for path in [*files, *([self.tls.client_ca] if self.tls.client_ca else [])]:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def poll(self) -> bool | None:
        """Reload when a file changed: True (swapped), False (rejected), None (unchanged)."""
        signature = self.current_signature()
        if signature == self.signature:
            return None
        return self.reload()

    def reload(self) -> bool:
        """Build every context aside and swap; a file that does not load keeps the old ones."""
        self.signature = self.current_signature()
        try:
            picks = self._build()
        except (OSError, ssl.SSLError) as exc:
            log.error("listener %s: certificates not reloaded, keeping the old ones: %s", self.name, exc)  # fmt: skip
            self._count("rejected")
            return False
        self.picks = picks
        log.info("listener %s: certificates reloaded", self.name)
        self._count("ok")
        return True

    def _count(self, result: str) -> None:
        if self.on_reload is not None:
            self.on_reload(self.name, result)

    def handshake_failed(self, exc: BaseException) -> None:
        if self.on_handshake_error is not None:
            self.on_handshake_error(self.name, handshake_reason(exc))


async def watch(listeners: Mapping[str, TlsListener], interval: float = 1.0) -> None:
    """Poll the certificate files of every TLS listener; a change reloads them. A few
    stat calls a second: cheaper on the loop than a thread hop."""
    while True:
        await asyncio.sleep(interval)
        for contexts in listeners.values():
            contexts.poll()


# ---- failed handshakes ---------------------------------------------------------------------

_REASONS = {
    "HTTP_REQUEST": "http_request",  # plain HTTP sent to the TLS port
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNSUPPORTED_PROTOCOL": "version",
    "VERSION_TOO_LOW": "version",
    "NO_PROTOCOLS_AVAILABLE": "version",
    "NO_SHARED_CIPHER": "cipher",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "client_certificate",
}


def handshake_reason(exc: BaseException) -> str:
    """A bounded label for a failed handshake."""
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason in _REASONS:
            return _REASONS[reason]
        return "client_alert" if "ALERT" in reason else "other"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):  # aborted: the handshake timeout
        return "timeout"
    return "closed" if isinstance(exc, ConnectionError | EOFError) else "other"


def _counted(contexts: TlsListener) -> type[ssl.SSLObject]:
    """The listener's SSLObject class: counts a handshake that fails in OpenSSL.

    `create_server(ssl=...)` (uvloop's and asyncio's) drops such failures silently; the
    documented `sslobject_class` hook sees them. Handshake timeouts and clients that hang
    up mid-handshake never reach OpenSSL's verdict and are not counted here."""

    class Counted(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                contexts.handshake_failed(exc)
                raise

    return Counted
