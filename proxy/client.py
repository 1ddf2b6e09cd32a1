"""Client verbs of SPEC §1: they talk to the admin API with urllib (no event loop).

Admin URL from `--admin` / $CANARYPROXY_ADMIN, token from $CANARYPROXY_TOKEN. Every
failure exits non-zero with the server's reason on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from argparse import Namespace
from typing import Any

TIMEOUT = 10.0


class ClientError(Exception):
    """A request the admin API refused, or could not be made; the message is for the user."""


def call(admin: str, method: str, path: str, body: Any = None) -> Any:
    """One admin API request -> decoded JSON answer; raises ClientError on any failure."""
    url = admin.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    token = os.environ.get("CANARYPROXY_TOKEN", "")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise ClientError(f"{method} {path}: {exc.code} {_reason(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach the admin API at {admin}: {why}") from None


def _reason(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip() or str(exc.reason)


def _run(fn: Any, args: Namespace) -> int:
    try:
        fn(args)
    except ClientError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# -- status ---------------------------------------------------------------------------


def format_status(st: dict) -> str:
    """The status JSON as a table an operator reads at a glance."""
    lines = [f"revision {st.get('revision')}   config {st.get('config_file')}"]
    if st.get("last_reload_error"):
        lines.append(f"LAST RELOAD REJECTED: {st['last_reload_error']}")
    health = _health_by_subset(st.get("upstreams", []))
    lines.append("")
    lines.append(f"{'ROUTE':<16} {'VERSION':<10} {'WEIGHT':>7} {'RPS':>8} {'ERR%':>6} "
                 f"{'P99ms':>8} {'HEALTHY':>8}")  # fmt: skip
    for r in st.get("routes", []):
        for subset, w in r.get("weights", {}).items():
            v = r.get("versions", {}).get(subset, {})
            lines.append(
                f"{r['name']:<16} {subset:<10} {w:>7g} {v.get('rps', 0):>8.1f} "
                f"{v.get('error_pct', 0):>6.2f} {v.get('p99_ms', 0):>8.1f} "
                f"{health.get(subset, '-'):>8}"
            )
        if r.get("preview") and r.get("idle"):
            p = r["preview"]
            lines.append(f"{'':<16} live {','.join(r['live'])}; preview idle "
                         f"{','.join(r['idle'])} with {p['header']}: {p['value']}")  # fmt: skip
    lines.extend(_canary_lines(st.get("canaries", [])))
    lines.extend(_worker_lines(st.get("workers")))
    return "\n".join(lines)


def _worker_lines(workers: list[dict] | None) -> list[str]:
    """One line per data-plane process of `serve --workers N` (absent in one process)."""
    if not workers:
        return []
    out = ["", f"{'WORKER':<8} {'PID':>8} {'ALIVE':<6} {'RESTARTS':>8} {'REQUESTS':>10}"]
    for w in workers:
        alive = "yes" if w.get("alive") else "NO"
        out.append(
            f"{w.get('index', ''):<8} {w.get('pid') or '-':>8} {alive:<6} "
            f"{w.get('restarts', 0):>8} {w.get('requests', 0):>10}"
        )
    return out


def _health_by_subset(upstreams: list[dict]) -> dict[str, str]:
    out = {}
    for u in upstreams:
        eps = u.get("endpoints", [])
        ok = sum(1 for e in eps if e.get("healthy") and not e.get("ejected"))
        out[u["name"]] = f"{ok}/{len(eps)}"
    return out


def _canary_lines(canaries: list[dict]) -> list[str]:
    if not canaries:
        return []
    out = [
        "",
        f"{'CANARY':<16} {'ROUTE':<12} {'PHASE':<14} {'WEIGHT':>7} {'STEP':>5} {'FAILED':>6}",
    ]
    for c in canaries:
        out.append(
            f"{c.get('name', ''):<16} {c.get('route', ''):<12} {c.get('phase', ''):<14} "
            f"{c.get('weight', 0):>7g} {c.get('step', 0):>5} {c.get('failed_checks', 0):>6}"
        )
        if c.get("message"):
            out.append(f"{'':<16} {c['message']}")
    return out


def cmd_status(args: Namespace) -> int:
    try:
        while True:
            st = call(args.admin, "GET", "/api/v1/status")
            text = json.dumps(st, indent=2) if getattr(args, "json", False) else format_status(st)
            if not getattr(args, "watch", False):
                print(text)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            time.sleep(max(0.2, float(getattr(args, "interval", 1.0))))
    except ClientError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return 1


# -- mutations ------------------------------------------------------------------------


def parse_pairs(pairs: list[str]) -> dict[str, float]:
    """["v1=90", "v2=10"] -> {"v1": 90.0, "v2": 10.0}; ClientError on a malformed pair."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(value)
        except ValueError:
            raise ClientError(f"expected SUBSET=WEIGHT, got {pair!r}") from None
    return out


def cmd_weights(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        ans = call(
            a.admin, "PUT", f"/api/v1/routes/{_quote(a.route)}/weights", parse_pairs(a.pairs)
        )
        print(f"revision {ans['revision']}: {a.route} {_fmt_weights(ans['weights'])}")

    return _run(go, args)


def cmd_switch(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        ans = call(a.admin, "POST", f"/api/v1/routes/{_quote(a.route)}/switch", {"to": a.subset})
        print(f"revision {ans['revision']}: {a.route} {_fmt_weights(ans['weights'])}")

    return _run(go, args)


def cmd_rollout(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        name = a.canary or _only_canary(a.admin)
        ans = call(a.admin, "POST", f"/api/v1/canaries/{_quote(name)}/{a.action}", {})
        print(f"{name}: {a.action}: {ans.get('message', 'ok')}")

    return _run(go, args)


def _only_canary(admin: str) -> str:
    names = [c["name"] for c in call(admin, "GET", "/api/v1/status").get("canaries", [])]
    if len(names) != 1:
        raise ClientError(f"name the canary: one of {names}" if names else "no canary configured")
    return str(names[0])


def cmd_history(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        revs = call(a.admin, "GET", "/api/v1/history")["revisions"]
        if getattr(a, "json", False):
            print(json.dumps(revs, indent=2))
            return
        print(f"{'REV':>4}  {'TIME':<25} {'CAUSE':<18} WEIGHTS")
        for r in revs:
            ws = "  ".join(f"{route}: {_fmt_weights(w)}" for route, w in r["weights"].items())
            print(f"{r['revision']:>4}  {r['time']:<25} {r['cause']:<18} {ws}")

    return _run(go, args)


def cmd_undo(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        body = {"to_revision": a.to_revision} if a.to_revision is not None else {}
        ans = call(a.admin, "POST", "/api/v1/undo", body)
        print(f"revision {ans['revision']}: restored revision {ans['restored']}")

    return _run(go, args)


def _fmt_weights(w: dict[str, float]) -> str:
    return " ".join(f"{s}={x:g}" for s, x in w.items())
