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

from proxy.routing.split import format_weights

TIMEOUT = 10.0


class ClientError(Exception):
    """A request the admin API refused, or could not be made; the message is for the user.

    `body` is the decoded answer of a refusal, when one came."""

    def __init__(self, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.body = body


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
        body = _json_body(exc.read())
        reason = _reason(body) or str(exc.reason)
        raise ClientError(f"{method} {path}: {exc.code} {reason}", body) from None
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach the admin API at {admin}: {why}") from None


def _json_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()


def _reason(body: Any) -> str:
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return body if isinstance(body, str) else ""


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
        if r.get("override") and r.get("file_weights") not in (None, r.get("weights")):
            lines.append(f"{'':<16} weights override the file's {format_weights(r['file_weights'])} "
                         f"(kept in the state dir {st.get('state_dir', '')}; `undo` to go back)")  # fmt: skip
        if r.get("preview") and r.get("idle"):
            p = r["preview"]
            lines.append(f"{'':<16} live {','.join(r['live'])}; preview idle "
                         f"{','.join(r['idle'])} with {p['header']}: {p['value']}")  # fmt: skip
    lines.extend(_canary_lines(st.get("canaries", [])))
    lines.extend(_worker_lines(st.get("workers")))
    lines.extend(_cluster_lines(st.get("cluster")))
    return "\n".join(lines)


def _cluster_lines(c: dict | None) -> list[str]:
    """Fleet mode: the store, the leader and epoch, and each replica's applied revision."""
    if not c:
        return []
    stale = c.get("stale_seconds") or 0
    head = (f"fleet {c.get('store')}   replica {c.get('replica')}   leader "
            f"{c.get('leader') or 'NONE'} (epoch {c.get('epoch')})   applied revision "
            f"{c.get('revision')}")  # fmt: skip
    out = ["", head]
    if stale:
        out.append(f"STORE UNREACHABLE for {stale:.1f} s: serving the last state, refusing changes")
    if (c.get("config") or {}).get("file_differs"):
        out.append("this replica's config file differs from the fleet's: the fleet's is served")
    if c.get("error"):
        out.append(f"FLEET ERROR: {c['error']}")
    out.append(f"{'REPLICA':<24} {'APPLIED':>8} {'ADMIN':<22}")
    for m in c.get("members", []):
        mark = " (leader)" if m.get("replica") == c.get("leader") else ""
        out.append(f"{str(m.get('replica')) + mark:<24} {m.get('applied_revision', 0):>8} "
                   f"{m.get('admin', ''):<22}")  # fmt: skip
    return out


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
    if getattr(args, "watch", False):
        return _watch(args)
    try:
        st = call(args.admin, "GET", "/api/v1/status")
    except ClientError as exc:
        print(f"canaryproxy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(st, indent=2) if getattr(args, "json", False) else format_status(st))
    return 0


def _watch(args: Namespace) -> int:
    """Redraw until interrupted. An unreachable admin (a restart, a deploy) is shown
    and retried, never fatal: the screen resumes when the admin answers again."""
    interval = max(0.2, float(getattr(args, "interval", 1.0)))
    last_revision = None
    while True:
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            st = call(args.admin, "GET", "/api/v1/status")
            last_revision = st.get("revision")
            body = json.dumps(st, indent=2) if getattr(args, "json", False) else format_status(st)
            screen = f"{now}   {args.admin}   revision {last_revision}\n\n{body}"
        except ClientError as exc:
            seen = f"last seen revision {last_revision}" if last_revision is not None else ""
            screen = f"{now}   {args.admin}   unreachable, retrying every {interval:g} s   {seen}\n\n{exc}"
        sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
        sys.stdout.flush()
        time.sleep(interval)


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
        print(f"revision {ans['revision']}: {a.route} {format_weights(ans['weights'])}")

    return _run(go, args)


def cmd_switch(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        ans = call(a.admin, "POST", f"/api/v1/routes/{_quote(a.route)}/switch", {"to": a.subset})
        print(f"revision {ans['revision']}: {a.route} {format_weights(ans['weights'])}")

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
            ws = "  ".join(f"{route}: {format_weights(w)}" for route, w in r["weights"].items())
            by = f"  (by {r['who']}, epoch {r.get('epoch', 0)})" if r.get("who") else ""
            print(f"{r['revision']:>4}  {r['time']:<25} {r['cause']:<18} {ws}{by}")

    return _run(go, args)


def cmd_undo(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        body = {"to_revision": a.to_revision} if a.to_revision is not None else {}
        ans = call(a.admin, "POST", "/api/v1/undo", body)
        print(f"revision {ans['revision']}: restored revision {ans['restored']}")

    return _run(go, args)


# -- reload and explain -----------------------------------------------------------------


def cmd_reload(args: Namespace) -> int:
    """POST /api/v1/reload; a rejected file prints every error and exits 1."""
    try:
        ans = call(args.admin, "POST", "/api/v1/reload", {})
    except ClientError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        if body.get("result") != "rejected":
            print(f"canaryproxy: {exc}", file=sys.stderr)
            return 1
        print("reload rejected; the running config stays:", file=sys.stderr)
        for line in body.get("errors") or [body.get("error", "")]:
            print(f"  {line}", file=sys.stderr)
        return 1
    if ans.get("result") == "unchanged":
        print(f"config unchanged (revision {ans.get('revision')})")
    else:
        print(f"config reloaded: revision {ans.get('revision')}")
    return 0


def explain_request(args: Namespace) -> dict:
    """The CLI's explain options -> the POST /api/v1/explain body."""
    target = args.target
    headers: dict[str, str] = {}
    if "://" in target:
        url = urllib.parse.urlsplit(target)
        if url.netloc:
            headers["host"] = url.netloc
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
    if not target.startswith("/"):
        raise ClientError(f"expected a path starting with / or a URL, got {args.target!r}")
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ClientError(f"expected -H 'NAME: VALUE', got {h!r}")
        headers[name.strip().lower()] = value.strip()
    cookies: dict[str, str] = {}
    for c in args.cookie:
        name, sep, value = c.partition("=")
        if not sep or not name.strip():
            raise ClientError(f"expected --cookie NAME=VALUE, got {c!r}")
        cookies[name.strip()] = value
    return {
        "method": args.method.upper(),
        "path": target,
        "headers": headers,
        "cookies": cookies,
        "client_ip": args.client_ip,
    }


def cmd_explain(args: Namespace) -> int:
    def go(a: Namespace) -> None:
        body = explain_request(a)
        ans = call(a.admin, "POST", "/api/v1/explain", body)
        if getattr(a, "json", False):
            print(json.dumps(ans, indent=2))
            return
        print(format_explain(body, ans))

    return _run(go, args)


def format_explain(req: dict, ans: dict) -> str:
    """The explain answer as a few readable lines: route, skipped routes, version."""
    lines = [f"{req['method']} {req['path']}"]
    for s in ans.get("skipped", []):
        lines.append(f"  skipped route {s['route']}: {s['why']}")
    if ans.get("route") is None:
        lines.append("  no route matches: the answer is 404")
        return "\n".join(lines)
    matched = ans.get("matched") or {}
    item = matched.get("item")
    where = f"match[{item}]" if item is not None else "no match list"
    conds = ", ".join(matched.get("conditions", []))
    lines.append(f"  route {ans['route']}: {where}" + (f" ({conds})" if conds else ""))
    lines.append(f"  version: {_pick_line(ans)}")
    probs = ans.get("probabilities") or {}
    shares = "  ".join(f"{s} {p * 100:.4g} %" for s, p in probs.items())
    lines.append(f"  weights: {format_weights(ans.get('weights', {}))}   shares: {shares}")
    sticky = ans.get("sticky")
    if sticky:
        lines.append(f"  sticky cookie {sticky['cookie']}: {_sticky_line(sticky)}")
    mirror = ans.get("mirror")
    if mirror:
        lines.append(f"  mirror: {mirror['percent']:g} % copied to {mirror['to']}")
    return "\n".join(lines)


def _pick_line(ans: dict) -> str:
    subset, reason = ans.get("subset"), ans.get("reason")
    if reason == "canary_match":
        return f"{subset}: the canary's step match[{ans.get('canary_match')}] holds"
    if reason == "preview":
        return f"{subset}: the blue-green preview header names the idle version"
    if reason == "sticky":
        return f"{subset}: pinned by the sticky cookie"
    split = ans.get("split") or {}
    if reason == "hash":
        spans = ", ".join(f"{s} {lo}-{hi}" for s, (lo, hi) in split.get("buckets", {}).items())
        return (
            f"{subset}: hash of {split.get('by')} {split.get('name')}={split.get('key')!r} "
            f"is bucket {split.get('bucket')} of 10000 ({spans})"
        )
    if reason == "no_weight":
        return "none: every destination has weight 0 (503)"
    note = f"; {split['note']}" if split.get("note") else ""
    if subset is not None:
        return f"{subset}: the only destination with weight{note}"
    return f"a random draw by weight, per request{note}"


def _sticky_line(sticky: dict) -> str:
    value = sticky.get("value")
    text = f"sent {value!r}" if value is not None else "not sent"
    if sticky.get("note"):
        text += f" ({sticky['note']})"
    if sticky.get("set_cookie"):
        text += f"; answer sets {sticky['set_cookie']}"
    return text
