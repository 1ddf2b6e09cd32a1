"""The fault corpus: malformed and smuggling requests with the outcome a safe proxy gives.

Two sources:
- `reliability_cases()`: every client-side behaviour of table (a) in RELIABILITY.md
  (limits, framing, Host, Expect, CONNECT, absolute-form, underscores, slow header).
- `guardian_cases()`: the YAML cases of aws/http-desync-guardian (Apache-2.0, commit
  7dd6f37; copied with LICENSE and NOTICE into corpus/http-desync-guardian/), rendered to
  raw bytes. Its tiers map to a proxy's duty as its docs say: Severe -> 400 + close,
  nothing forwarded; Ambiguous -> reject, or serve without letting anything smuggled
  through; Compliant -> forwarded untouched (200).

Every request that carries framing headers is followed by an unfinished smuggled request
(`/smuggled`): whatever the proxy answers, the upstream must never parse it as a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

GUARDIAN_DIR = Path(__file__).resolve().parent / "corpus" / "http-desync-guardian"
# Left unfinished on purpose: a proxy that frames the request as it forwards it never
# sends this on, while a desynchronised upstream glues it in front of the next request
# on the pooled connection (the classic "GPOST" attack) and logs a `/smuggled` request.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nX-Ignore: "
PROBE_BODY = b"0\r\n\r\n" + SMUGGLED
HOST = b"Host: localhost\r\n"

# reject: answered with one of `statuses`, connection closed, nothing reached the upstream.
# pass:   answered 200, exactly `forwarded` requests reached the upstream.
# safe:   either of the above (the RFC leaves the choice); never anything smuggled.
Kind = Literal["reject", "pass", "safe"]


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes | tuple[bytes, ...]  # a tuple = separate writes, `pause` s apart
    kind: Kind
    statuses: tuple[int, ...] = (400,)
    forwarded: int = 1
    pause: float = 0.0
    timeout: float = 3.0
    no_interim: bool = False  # no `100 Continue` may be sent
    body_len: int | None = None  # for `pass`: the body length the upstream must receive
    source: str = "RELIABILITY.md"
    notes: tuple[str, ...] = field(default=())


def _req(head: str, *headers: str, body: bytes = b"", host: bool = True) -> bytes:
    lines = [head] + (["Host: localhost"] if host else []) + list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _limits() -> list[Case]:
    big = "a" * 9000
    many = [f"X-H-{i}: v" for i in range(101)]
    fits = [f"X-H-{i}: v" for i in range(99)]  # + Host = 100 headers: at the limit
    total = [f"X-Big-{i}: {'b' * 6200}" for i in range(10)]  # each < 8 KiB, sum > 60 KiB
    return [
        Case("request line > 8 KiB", _req(f"GET /{big} HTTP/1.1"), "reject", (414,)),
        Case("one header > 8 KiB", _req("GET / HTTP/1.1", f"X-Big: {big}"), "reject", (431,)),
        Case("headers total > 60 KiB", _req("GET / HTTP/1.1", *total), "reject", (431,)),
        Case("101 headers + Host", _req("GET / HTTP/1.1", *many), "reject", (431,)),
        Case("100 headers incl. Host", _req("GET /h100 HTTP/1.1", *fits), "pass"),
    ]


def _content_length() -> list[Case]:
    cl = "POST / HTTP/1.1"
    body = b"hello" + PROBE_BODY
    return [
        Case("CL + TE", _req(cl, "Content-Length: 6", "Transfer-Encoding: chunked", body=PROBE_BODY), "reject"),
        Case("TE + CL", _req(cl, "Transfer-Encoding: chunked", "Content-Length: 4", body=b"5c\r\n" + PROBE_BODY), "reject"),
        Case("duplicate CL equal", _req(cl, "Content-Length: 5", "Content-Length: 5", body=body), "reject"),
        Case("duplicate CL differing", _req(cl, "Content-Length: 5", "Content-Length: 50", body=body), "reject"),
        Case("CL list 5, 5", _req(cl, "Content-Length: 5, 5", body=body), "reject"),
        Case("CL +5", _req(cl, "Content-Length: +5", body=body), "reject"),
        Case("CL -1", _req(cl, "Content-Length: -1", body=body), "reject"),
        Case("CL 0x5", _req(cl, "Content-Length: 0x5", body=body), "reject"),
        Case("CL 5 5", _req(cl, "Content-Length: 5 5", body=body), "reject"),
        Case("CL empty", _req(cl, "Content-Length: ", body=body), "reject"),
        Case("CL overflow", _req(cl, "Content-Length: 99999999999999999999999", body=body), "reject", (400, 413)),
        Case("CL with space before colon", _req(cl, "Content-Length : 5", body=body), "reject"),
        Case("CL valid", _req("POST /cl HTTP/1.1", "Content-Length: 5", body=b"hello"), "pass", body_len=5),
    ]  # fmt: skip


def _transfer_encoding() -> list[Case]:
    te = "POST / HTTP/1.1"
    bad = (400, 501)
    return [
        Case("TE chunked, chunked", _req(te, "Transfer-Encoding: chunked, chunked", body=PROBE_BODY), "reject", bad),
        Case("TE gzip, chunked", _req(te, "Transfer-Encoding: gzip, chunked", body=PROBE_BODY), "reject", bad),
        Case("TE gzip", _req(te, "Transfer-Encoding: gzip", body=PROBE_BODY), "reject", bad),
        Case("TE identity", _req(te, "Transfer-Encoding: identity", body=PROBE_BODY), "reject", bad),
        Case("TE chunked, identity", _req(te, "Transfer-Encoding: chunked, identity", body=PROBE_BODY), "reject", bad),
        Case("two TE lines", _req(te, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", body=PROBE_BODY), "reject", bad),
        Case("TE xchunked", _req(te, "Transfer-Encoding: xchunked", body=PROBE_BODY), "reject", bad),
        Case("TE space before colon", _req(te, "Transfer-Encoding : chunked", body=PROBE_BODY), "reject"),
        Case("TE obs-fold", _req(te, "Transfer-Encoding:", " chunked", body=PROBE_BODY), "reject"),
        Case("TE vertical tab", _req(te, "Transfer-Encoding:\x0bchunked", body=PROBE_BODY), "reject", bad),
        Case("HTTP/1.0 + TE", _req("POST / HTTP/1.0", "Transfer-Encoding: chunked", body=PROBE_BODY), "reject"),
        Case("TE.CL smuggle", _req(te, "Transfer-Encoding: chunked", "Content-Length: 3", body=b"8\r\nSMUGGLED\r\n" + PROBE_BODY), "reject"),
        Case("chunk size 0x5", _req(te, "Transfer-Encoding: chunked", body=b"0x5\r\nhello\r\n" + PROBE_BODY), "safe", bad, forwarded=0),
        Case("chunk size with LF only", _req(te, "Transfer-Encoding: chunked", body=b"5\nhello\n" + PROBE_BODY), "safe", bad, forwarded=0),
        Case("TE chunked valid", _req("POST /te HTTP/1.1", "Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"), "pass", body_len=5),
    ]  # fmt: skip


def _characters() -> list[Case]:
    g = "GET / HTTP/1.1"
    return [
        Case("obs-fold", _req(g, "X-Foo: a", " b"), "reject"),
        Case("bare LF line ends", b"GET / HTTP/1.1\nHost: localhost\n\n", "reject"),
        Case("bare CR in value", _req(g, "X-Foo: a\rb"), "reject"),
        Case("bare CR line end", b"GET / HTTP/1.1\r\nHost: localhost\rX-Foo: b\r\n\r\n", "reject"),
        Case("NUL in value", _req(g, "X-Foo: a\x00b"), "reject"),
        Case("NUL in name", _req(g, "X-F\x00oo: a"), "reject"),
        Case("CTL 0x01 in value", _req(g, "X-Foo: a\x01b"), "reject"),
        Case("DEL in name", _req(g, "X-F\x7foo: a"), "reject"),
        Case("space in name", _req(g, "X Foo: a"), "reject"),
        Case(
            "whitespace before first header",
            b"GET / HTTP/1.1\r\n Host: localhost\r\n\r\n",
            "reject",
        ),
        Case("header without colon", _req(g, "X-Foo a"), "reject"),
        Case("NUL in method", _req("G\x00T / HTTP/1.1"), "reject"),
        Case("two spaces in request line", _req("GET  / HTTP/1.1"), "reject"),
        Case("CR LF in target", b"GET /a\rb HTTP/1.1\r\nHost: localhost\r\n\r\n", "reject"),
        Case("unknown version", _req("GET / HTTP/9.9"), "reject", (400, 505)),
    ]


def _host_and_target(trap: str) -> list[Case]:
    g = "GET / HTTP/1.1"
    return [
        Case("missing Host on HTTP/1.1", _req(g, host=False), "reject"),
        Case("duplicate Host", _req(g, "Host: localhost"), "reject"),
        Case("Host with space", _req(g, "Host: local host", host=False), "reject"),
        Case("Host with CTL", _req(g, "Host: local\x01host", host=False), "reject"),
        Case("HTTP/1.0 without Host", _req("GET /h10 HTTP/1.0", host=False), "pass"),
        Case("CONNECT", _req(f"CONNECT {trap} HTTP/1.1", f"Host: {trap}", host=False), "reject", (405,)),
        Case("absolute-form to trap", _req(f"GET http://{trap}/steal HTTP/1.1", f"Host: {trap}", host=False),
             "safe", (400, 404, 421)),
        Case("Host header of trap", _req(g, f"Host: {trap}", host=False), "safe", (400, 404, 421)),
        Case("absolute-form, Host differs", _req(f"GET http://{trap}/x HTTP/1.1"), "safe", (400, 404, 421)),
    ]  # fmt: skip


def _expect_and_names() -> list[Case]:
    p = "POST /e HTTP/1.1"
    return [
        Case("unknown Expect", _req(p, "Expect: tea", "Content-Length: 5", body=b"hello"), "reject", (417,)),
        Case("Expect 100-continue, CL over max_body", _req(p, "Expect: 100-continue", "Content-Length: 20971520"),
             "reject", (413,), no_interim=True),
        Case("Expect 100-continue, small body", (_req(p, "Expect: 100-continue", "Content-Length: 5"), b"hello"),
             "pass", pause=0.2, body_len=5),
        Case("underscore header dropped", _req("GET /u HTTP/1.1", "X_Forwarded_For: 6.6.6.6"), "pass",
             notes=("no-underscore",)),
        Case("pipelined two requests", _req("GET /p1 HTTP/1.1") + _req("GET /p2 HTTP/1.1"), "pass", forwarded=2),
        Case("Connection nominates Content-Length", _req(p, "Connection: Content-Length", "Content-Length: 5",
             body=b"hello"), "safe", forwarded=1),
    ]  # fmt: skip


def _slow() -> list[Case]:
    parts = (b"GET /slow-head HTTP/1.1\r\n",) + tuple(b"X-T: %d\r\n" % i for i in range(12))
    return [Case("slow header (trickle)", parts, "reject", (408,), pause=0.3, timeout=6.0)]


# Obfuscations of `Transfer-Encoding: chunked`, restated from the permutation table of
# PortSwigger's http-request-smuggler (DesyncBox, Apache-2.0) and defparam/smuggler (MIT).
# Each rides on a Content-Length that covers the probe: a proxy that honours one framing
# while the upstream honours the other would let the unfinished `/smuggled` through.
# name -> (obfuscated header lines, a framing-safe proxy must reject it)
TE_PERMUTATIONS: dict[str, tuple[str, bool]] = {
    "vanilla": ("Transfer-Encoding: chunked", True),
    "nospace": ("Transfer-Encoding:chunked", True),
    "tab before value": ("Transfer-Encoding:\tchunked", True),
    "two spaces before value": ("Transfer-Encoding:  chunked", True),
    "tab after value": ("Transfer-Encoding: chunked\t", True),
    "upper case": ("TRANSFER-ENCODING: CHUNKED", True),
    "mixed case": ("TrAnSFer-EnCODinG: cHuNkeD", True),
    "lower-case name": ("Transfer-encoding: chunked", True),
    "dual chunked lines": ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", True),
    "identity then chunked lines": ("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked", True),
    "chunked, identity": ("Transfer-Encoding: chunked, identity", True),
    "identity, chunked": ("Transfer-Encoding: identity, chunked", True),
    "space before colon": ("Transfer-Encoding : chunked", True),
    "space in name": ("Transfer Encoding: chunked", True),
    "obs-fold value": ("Transfer-Encoding:\r\n chunked", True),
    "obs-fold name": ("Foo: bar\r\n Transfer-Encoding: chunked", True),
    "tab-fold name": ("Foo: bar\r\n\tTransfer-Encoding: chunked", True),
    "LF-only before": ("Foo: bar\nTransfer-Encoding: chunked", True),
    "CR-only before": ("Foo: bar\rTransfer-Encoding: chunked", True),
    "CR suffix": ("Transfer-Encoding: chunked\r", True),
    "CR in name": ("Tra\rnsfer-Encoding: chunked", True),
    "vertical tab": ("Transfer-Encoding:\x0bchunked", True),
    "nbsp": ("Transfer-Encoding:\xa0chunked", True),
    "quoted": ('Transfer-Encoding: "chunked"', True),
    "single-quoted": ("Transfer-Encoding: 'chunked'", True),
    "truncated coding": ("Transfer-Encoding: chunk", True),
    "chunked with parameter": ("Transfer-Encoding: chunked;ext=1", True),
    "underscore name": ("Transfer_Encoding: chunked", False),
    "Content-Encoding instead": ("Content-Encoding: chunked", False),
    "X- prefixed": ("X-Transfer-Encoding: chunked", False),
}  # fmt: skip


def te_permutation_cases() -> list[Case]:
    out = []
    for name, (lines, reject) in TE_PERMUTATIONS.items():
        head = f"POST /te-perm HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(PROBE_BODY)}"
        payload = (head + "\r\n" + lines + "\r\n\r\n").encode("latin-1") + PROBE_BODY
        kind: Kind = "reject" if reject else "safe"
        out.append(Case(f"te-perm: {name}", payload, kind, (400, 501), source="smuggler"))
    return out


def reliability_cases(trap: str) -> list[Case]:
    """`trap` is the address of an upstream outside the config: it must never be reached."""
    return (
        _limits()
        + _content_length()
        + _transfer_encoding()
        + _characters()
        + _host_and_target(trap)
        + _expect_and_names()
        + _slow()
    )


# ------------------------------------------------------------ http-desync-guardian


def _enc(s: object) -> bytes:
    text = str(s)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _framing(headers: list[dict]) -> tuple[int | None, bool, bool]:
    """(valid single CL or None, exactly-chunked TE, any CL/TE-like header present)."""
    names = [_enc(h["name"]).lower() for h in headers]
    values = [_enc(h["value"]).strip(b" \t") for h in headers]
    cls = [v for n, v in zip(names, values, strict=True) if n == b"content-length"]
    tes = [v.lower() for n, v in zip(names, values, strict=True) if n == b"transfer-encoding"]
    suspicious = any(b"content-length" in n or b"transfer-encoding" in n for n in names)
    cl = int(cls[0]) if len(cls) == 1 and cls[0].isdigit() else None
    return cl, tes == [b"chunked"], suspicious


def _render(case: dict) -> bytes:
    headers = case["headers"] or []
    version = case["version"]
    line = (
        _enc(case["method"]) + b" " + _enc(case["uri"]) + (b" " + _enc(version) if version else b"")
    )
    out = [line]
    if not any(_enc(h["name"]).lower() == b"host" for h in headers):
        out.append(b"Host: localhost")
    for h in headers:
        value = _enc(h["value"])
        out.append(_enc(h["name"]) + (b":" if value[:1] in (b" ", b"\t") else b": ") + value)
    return b"\r\n".join(out) + b"\r\n\r\n"


def _plain_target(case: dict) -> bool:
    uri = str(case["uri"])
    return uri.startswith("/") and uri.isascii() and uri.isprintable() and " " not in uri


def _guardian_case(case: dict, source: str, index: int) -> Case:
    tier = case["expected"]["tier"]
    cl, chunked, suspicious = _framing(case["headers"] or [])
    head = _render(case)
    name = f"{source}#{index}: {case['name']}"
    if tier == "Severe":
        return Case(
            name, head + (PROBE_BODY if suspicious else b""), "reject", (400, 501), source=source
        )
    if tier == "Compliant":
        body = b"a" * cl if cl is not None else (b"0\r\n\r\n" if chunked else b"")
        # RELIABILITY row 18 rejects any TE but exactly `chunked`; odd targets may be refused
        strict = (suspicious and cl is None and not chunked) or not _plain_target(case)
        size = cl if cl is not None else 0
        kind: Kind = "safe" if strict else "pass"
        return Case(name, head + body, kind, (400, 501), source=source, body_len=size)
    body = PROBE_BODY if suspicious else b""
    return Case(name, head + body, "safe", (400, 404, 405, 501, 505), source=source)


def guardian_cases() -> list[Case]:
    out = []
    for path in sorted(GUARDIAN_DIR.glob("*.yaml")):
        cases = yaml.safe_load(path.read_text(encoding="utf-8")) or []
        out += [_guardian_case(case, path.stem, i) for i, case in enumerate(cases)]
    return out
