"""ingress-nginx annotations -> what one Ingress's locations do.

Translated (the rest is refused, or ignored when the table says why):
- `canary`, `canary-by-header`, `-value`, `-pattern`, `canary-by-cookie`, `canary-weight`,
  `canary-weight-total` (nginx_canary);
- `use-regex`, `rewrite-target` (regex locations for the whole host, as ingress-nginx);
- `ssl-redirect` (default on for the hosts of `spec.tls`), `force-ssl-redirect`: a 308 to
  https on the plain listener `web`;
- `permanent-redirect` (+ `-code`, default 301), `temporal-redirect` (+ `-code`, 302):
  every location of the Ingress answers with that redirect; `app-root`: `/` answers 302;
- `upstream-vhost` -> `rewrite.host`; `proxy-read-timeout` -> `timeout`;
  `proxy-body-size` -> `max_body`.
A canary Ingress inherits everything but its canary annotations from the main Ingress (as
ingress-nginx): its other annotations are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.importers.common import Doc, Report, Source, Table
from proxy.importers.nginx_canary import Rules

PREFIX = "nginx.ingress.kubernetes.io/"
_A = "metadata.annotations." + PREFIX
_CANARY = ("canary-by-header", "canary-by-header-value", "canary-by-header-pattern",
           "canary-by-cookie", "canary-weight", "canary-weight-total")  # fmt: skip
_BUFFERS = "nginx buffering; canaryproxy streams bodies both ways"
IGNORED: Table = {
    "metadata.annotations.(not nginx.ingress.kubernetes.io/)": "not read by ingress-nginx",
    "metadata.annotations.kubernetes.io/ingress.class": "which controller serves the Ingress",
    "spec.ingressClassName": "which controller serves the Ingress",
    "spec.tls[].secretName": "certificates live in Secrets; serve https with a TLS listener "
    "(listeners[].tls, SPEC §6)",
    f"{_A}(others on a canary Ingress)": "a canary inherits them from its main Ingress",
    f"{_A}(canary-* without canary: true)": "ingress-nginx reads them only on a canary",
    **{
        f"{_A}{k}": _BUFFERS
        for k in (
            "proxy-buffering",
            "proxy-buffer-size",
            "proxy-buffers-number",
            "proxy-request-buffering",
            "client-body-buffer-size",
        )
    },  # fmt: skip
    f"{_A}proxy-send-timeout": "nginx's timeout between two writes to the upstream; bodies "
    "stream with the listener's body_timeout",
}
REFUSED: Table = {
    f"{_A}configuration-snippet": "raw nginx configuration",
    f"{_A}server-snippet": "raw nginx configuration",
    f"{_A}affinity": "pins a pod; canaryproxy pins a version: write `sticky:` by hand",
    f"{_A}enable-cors": "CORS answers",
    f"{_A}whitelist-source-range": "403 for other clients (write a source_ip route)",
    f"{_A}backend-protocol": "only HTTP upstreams here (upstreams.NAME.tls by hand)",
    f"{_A}ssl-passthrough": "TLS passthrough",
    f"{_A}auth-url": "external authentication",
    f"{_A}x-forwarded-prefix": "the X-Forwarded-Prefix header",
    f"{_A}load-balance": "round-robin with passive ejection is built in",
    f"{_A}upstream-hash-by": "consistent hashing to pods",
    "spec.rules[].http.paths[].backend.resource": "only Service backends",
}
_TRANSLATED = {"canary", *_CANARY, "use-regex", "rewrite-target", "ssl-redirect",
               "force-ssl-redirect", "permanent-redirect", "permanent-redirect-code",
               "temporal-redirect", "temporal-redirect-code", "app-root", "upstream-vhost",
               "proxy-read-timeout", "proxy-body-size"}  # fmt: skip
_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass
class Options:
    """What one Ingress's annotations ask of its locations."""

    canary: Rules | None = None
    regex: bool = False
    rewrite_target: str | None = None
    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    redirect: Doc | None = None
    app_root: str | None = None
    route: Doc = field(default_factory=dict)  # timeout, max_body, rewrite.host
    refused: bool = False  # an annotation was refused: with --best-effort, not routed


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


def _int(report: Report, src: Source, key: str, value: str) -> int | None:
    if value.strip().lstrip("-").isdigit():
        return int(value)
    report.add(src, _A + key, f"{value!r}: not a number")
    return None


def parse(report: Report, src: Source) -> Options:
    """Every annotation of one Ingress read, noted or refused."""
    meta = src.doc.get("metadata") or {}
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    ann = {str(k): str(v) for k, v in (notes or {}).items()}
    ours = {k[len(PREFIX) :]: v for k, v in ann.items() if k.startswith(PREFIX)}
    for key in ann:
        if not key.startswith(PREFIX):
            table_key = (
                key
                if f"metadata.annotations.{key}" in IGNORED
                else "(not nginx.ingress.kubernetes.io/)"
            )
            report.note(
                src,
                f"metadata.annotations.{key}",
                f"ignored: {IGNORED['metadata.annotations.' + table_key]}",
            )
    is_canary = _true(ours.get("canary", "false"))
    opts = Options()
    for key, value in ours.items():
        _one(report, src, opts, key, value, is_canary)
    if is_canary:
        opts.canary = _rules(report, src, ours)
    return opts


def _one(report: Report, src: Source, opts: Options, key: str, value: str, is_canary: bool) -> None:
    path = _A + key
    if key == "canary" or (is_canary and key in _CANARY):
        return
    if key in _CANARY:
        report.note(src, path, f"ignored: {IGNORED[_A + '(canary-* without canary: true)']}")
    elif path in REFUSED or key not in _TRANSLATED and path not in IGNORED:
        report.unsupported(src, path, REFUSED)
    elif is_canary:
        report.note(src, path, f"ignored: {IGNORED[_A + '(others on a canary Ingress)']}")
    elif path in IGNORED:
        report.ignored(src, path, IGNORED)
    else:
        _translated(report, src, opts, key, value)


def _translated(report: Report, src: Source, opts: Options, key: str, value: str) -> None:
    if key == "use-regex":
        opts.regex = opts.regex or _true(value)
    elif key == "rewrite-target":
        opts.rewrite_target = value
    elif key == "ssl-redirect":
        opts.ssl_redirect = _true(value)
    elif key == "force-ssl-redirect":
        opts.force_ssl_redirect = _true(value)
    elif key in ("permanent-redirect", "temporal-redirect"):
        code = 301 if key.startswith("permanent") else 302
        opts.redirect = _redirect_to(report, src, key, value, code, opts.redirect)
    elif key.endswith("-redirect-code"):
        status = _int(report, src, key, value)
        if status is not None:
            opts.redirect = {**(opts.redirect or {}), "status": status}
    elif key == "app-root":
        opts.app_root = value
    elif key == "upstream-vhost":
        opts.route.setdefault("rewrite", {})["host"] = value
    elif key == "proxy-read-timeout":
        seconds = _int(report, src, key, value)
        if seconds:
            opts.route["timeout"] = f"{seconds}s"
    else:  # proxy-body-size
        size = _SIZE.match(value.strip())
        if not size:
            report.add(src, _A + key, f"{value!r}: not a size")
        elif int(size.group(1)) > 0:  # 0: nginx does not check; keep our default
            opts.route["max_body"] = int(size.group(1)) * _UNITS[size.group(2).lower()]


def _redirect_to(
    report: Report, src: Source, key: str, url: str, code: int, prev: Doc | None
) -> Doc | None:
    """`return CODE URL;`: the URL as written (nginx does not append the request URI)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        report.add(src, _A + key, f"{url!r}: only an http(s) URL without query or fragment")
        return prev
    out: Doc = {"scheme": parts.scheme, "host": parts.hostname, "path": parts.path or "/"}
    if parts.port:
        out["port"] = parts.port
    status = (prev or {}).get("status", code)
    return {**out, "status": status}


def _rules(report: Report, src: Source, ours: dict[str, str]) -> Rules:
    weight = _int(report, src, "canary-weight", ours.get("canary-weight", "0")) or 0
    total = _int(report, src, "canary-weight-total", ours.get("canary-weight-total", "100")) or 100
    if total < 100:
        report.note(src, _A + "canary-weight-total", f"{total}: ingress-nginx counts only "
                    "totals above 100, so the weight is out of 100")  # fmt: skip
    return Rules(
        header=ours.get("canary-by-header") or None,
        value=ours.get("canary-by-header-value") or None,
        pattern=ours.get("canary-by-header-pattern") or None,
        cookie=ours.get("canary-by-cookie") or None,
        weight=weight,
        total=total,
    )
