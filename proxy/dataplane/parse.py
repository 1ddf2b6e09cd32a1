"""A request head as llhttp's callbacks deliver it (mixed into `ClientConnection`).

The callbacks collect the fields, bound the head (RELIABILITY.md rows 1-3), check Host and
remember the fields the proxy reads itself (framing, Connection, Expect, forwarding, Via);
`_request` turns them into the `Request` record an exchange is built from. A field name with
an underscore is dropped (as nginx does). The state lives on the connection.
"""

from __future__ import annotations

from typing import Any, Final

from proxy import headers as hdr
from proxy.config.schema import Limits
from proxy.dataplane.request import (
    HOST,
    HTTP10,
    MAX_FIELD,
    MAX_HEADERS,
    MAX_HEADERS_TOTAL,
    MAX_LINE,
    NONE,
    SPECIAL,
    UNDERSCORE,
    UNKNOWN_VERSION,
    Reject,
    Request,
    absolute_form,
    framing_error,
    new_request_id,
    our_via,
    valid_authority,
)

_new_request: Final = Request.__new__  # object.__new__ in pure Python; the native one compiled


class RequestHeadParser:
    """httptools request callbacks up to the end of the head."""

    # Set by ClientConnection.__init__ (declared here for the type checker).
    parser: Any
    limits: Limits
    peer: str
    in_head: bool
    head_size: int
    url_done: bool
    valid_host: bytes  # the last Host value that passed the syntax check
    scheme: bytes  # b"http" | b"https": the listener's, the X-Forwarded-Proto to send
    version_hint: int  # what check_request_line read of the request being parsed

    def on_message_begin(self) -> None:
        self.in_head = True
        self.url_done = False
        self.url = b""
        self.headers: list[hdr.Header] = []
        self.hsize = 0
        self.fields = 0
        self.hosts = 0
        self.cl: list[bytes] = []
        self.te: list[bytes] = []
        self.conn_values: list[bytes] = []
        self.expect: bytes | None = None
        self.xff: bytes | None = None
        self.rid: bytes | None = None
        self.xfp: bytes | None = None
        self.looped = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_LINE:
            raise Reject("uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # chunked trailers are not forwarded
        self.url_done = True
        size = len(name) + len(value) + 2  # the field line "name: value"
        self.hsize += size + 2  # and its CRLF
        # Every field line counts, also the ones dropped below: the limits bound what the
        # client sent, not what is forwarded.
        self.fields += 1
        if self.fields > MAX_HEADERS or size > MAX_FIELD or self.hsize > MAX_HEADERS_TOTAL:
            raise Reject("headers_too_large")
        lname = hdr.lower_name(name)
        if UNDERSCORE in lname:  # an int: `b"_" in` would raise and catch a TypeError first
            return
        if value and (value[-1] == 32 or value[-1] == 9):  # SP or HTAB: rare, so tested first
            value = value.rstrip(b" \t")  # trailing OWS is not part of the value (RFC 9110 §5.5)
        if lname in SPECIAL:
            self._special(lname, value)
        self.headers.append((lname, name, value))

    def _special(self, lname: bytes, value: bytes) -> None:
        if lname == b"host":
            self.hosts += 1
            if value != self.valid_host:  # a keep-alive client repeats its Host
                if HOST.fullmatch(value) is None:
                    raise Reject("bad_request")
                self.valid_host = value
        elif lname == b"content-length":
            self.cl.append(value)
        elif lname == b"transfer-encoding":
            self.te.append(value)
        elif lname == b"connection":
            self.conn_values.append(value)
        elif lname == b"expect":
            self.expect = value if self.expect is None else b"\x00"
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            self.rid = value
        elif lname == b"x-forwarded-proto":
            self.xfp = value
        elif lname == b"via":
            self.looped = self.looped or our_via(value)

    def _count_head(self, began: bool, size: int) -> None:
        """Bound a head that llhttp is still buffering (one field spread over many reads)."""
        if began:
            self.head_size += size
        else:  # the head started inside this read: count what the callbacks saw
            self.head_size = len(self.url) + self.hsize
        if self.head_size > MAX_LINE + MAX_HEADERS_TOTAL + 1024:
            raise Reject("headers_too_large" if self.url_done else "uri_too_long")

    def _request(self) -> Request:
        """The parsed request (once its head is complete)."""
        p = self.parser
        method = p.get_method()
        hint, self.version_hint = self.version_hint, UNKNOWN_VERSION
        http10 = p.get_http_version() == "1.0" if hint == UNKNOWN_VERSION else hint == HTTP10
        cl = self.cl
        url = self.url
        error = framing_error(method, http10, self.hosts, cl, self.te, url, self.looped)
        has_host = self.hosts == 1
        if url[:1] != b"/":
            url, has_host, error = self._absolute(url, has_host, error)
        rid = self.rid
        if rid is None or not hdr.valid_request_id(rid):
            rid = new_request_id()
        trusted = self.limits.trusted_hops
        peer = self.peer
        req = _new_request(Request)  # not Request(...): see its docstring
        req.method = method
        req.target = url
        req.http10 = http10
        req.keep_alive = p.should_keep_alive()
        req.headers = self.headers
        req.content_length = int(cl[0]) if cl and error is None else None
        req.chunked = bool(self.te) and error is None
        req.request_id = rid
        req.client_ip = hdr.client_address(peer, self.xff, trusted) if trusted else peer
        req.connection = hdr.nominated(self.conn_values) if self.conn_values else NONE
        req.xff = hdr.forwarded_for(self.xff, peer)
        req.proto = self.xfp if trusted > 0 and self.xfp else self.scheme
        req.has_host = has_host
        req.error = error
        return req

    def _absolute(
        self, url: bytes, has_host: bool, error: str | None
    ) -> tuple[bytes, bool, str | None]:
        """An absolute-form target: forwarded by its path, and its authority replaces the
        Host field for routing and upstream (RFC 9112 §3.2.2) -> (target, has_host, error)."""
        parts = absolute_form(url)
        if parts is None:
            return url, has_host, error  # `*` (OPTIONS), or refused by framing_error
        authority, target = parts
        if not valid_authority(authority):
            return target, has_host, error or "bad_request"
        headers = [h for h in self.headers if h[0] != b"host"]
        headers.insert(0, (b"host", b"Host", authority))
        self.headers = headers
        return target, True, error
