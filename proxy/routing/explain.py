"""Explain a routing decision: which route matched, why the earlier ones did not, and how the
subset is picked. Same order as `table.choose`, but no random draw is made: for a random
split the answer gives the probabilities instead of a subset.

The answer is JSON-able (str, float, int, bool, None, lists, dicts) for `POST /api/v1/explain`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.routing.match import CompiledRule, Request, with_cookies
from proxy.routing.rewrite import redirect_location
from proxy.routing.route import DIRECT_RESPONSE, REDIRECT, CompiledRoute, split_key_value
from proxy.routing.split import bucket_of, pick_hash, probabilities


def _route_match(cr: CompiledRoute, req: Request) -> tuple[dict[str, Any] | None, str]:
    """(what matched, "") or (None, why every match item failed)."""
    if not cr.rules:
        return {"item": None, "conditions": ["(no match list: every request)"]}, ""
    failures: list[str] = []
    for i, rule in enumerate(cr.rules):
        failed = rule.first_failure(req)
        if failed is None:
            return {"item": i, "conditions": [label for label, _ in rule.checks]}, ""
        failures.append(f"match[{i}]: {failed} did not hold")
    return None, "; ".join(failures)


def _first_matching(rules: tuple[CompiledRule, ...], req: Request) -> int:
    for i, rule in enumerate(rules):
        if rule.matches(req):
            return i
    return -1


def _split_info(cr: CompiledRoute, req: Request) -> dict[str, Any]:
    info: dict[str, Any] = {"by": cr.split_by}
    if cr.split_by == "random":
        return info
    info["name"] = cr.split_key
    key = split_key_value(cr, req)
    info["key"] = key
    if key is None:
        info["note"] = "key missing: random split by weights"
        return info
    bucket = bucket_of(cr.name, key)
    subset = pick_hash(cr.weighted, bucket)
    info["bucket"] = bucket
    info["buckets"] = {
        s: [lo, hi] for s, (lo, hi) in zip(cr.weighted.subsets, cr.weighted.edges, strict=True)
    }
    info["subset"] = subset
    return info


def _pick(cr: CompiledRoute, req: Request) -> dict[str, Any]:
    """How the subset is picked: (subset, reason) plus details; mirrors `table.choose`."""
    if cr.canary_subset is not None:
        i = _first_matching(cr.canary_rules, req)
        if i >= 0:
            return {"subset": cr.canary_subset, "reason": "canary_match", "canary_match": i}
    if cr.preview is not None and cr.idle is not None:
        if req.headers.get(cr.preview[0]) == cr.preview[1]:
            return {"subset": cr.idle, "reason": "preview"}
    pinned = req.cookies().get(cr.sticky_cookie) if cr.sticky_cookie is not None else None
    if pinned is not None and pinned in cr.live:
        return {"subset": pinned, "reason": "sticky"}
    split = _split_info(cr, req)
    out: dict[str, Any] = {"split": split}
    if "subset" in split:
        out["subset"], out["reason"] = split["subset"], "hash"
    elif cr.weighted.last < 0:
        out["subset"], out["reason"] = None, "no_weight"
    else:  # no draw is made: the subset is known only when one subset takes everything
        only = next(iter(cr.live)) if len(cr.live) == 1 else None
        out["subset"], out["reason"] = only, "weights"
    return out


def _sticky_info(cr: CompiledRoute, req: Request, picked: dict[str, Any]) -> dict[str, Any]:
    value = req.cookies().get(cr.sticky_cookie or "")
    info: dict[str, Any] = {"cookie": cr.sticky_cookie, "value": value}
    if value is not None and value not in cr.live:
        known = value in cr.weighted.subsets
        info["note"] = "weight 0: cookie overridden" if known else "unknown subset: ignored"
    subset = picked["subset"]
    if picked["reason"] in ("canary_match", "preview", "sticky"):
        info["set_cookie"] = None
    elif subset is not None:
        info["set_cookie"] = cr.set_cookies[subset] if subset != value else None
    else:  # random draw: the cookie is set to whatever the draw picks
        info["set_cookie"] = "set to the picked subset" if cr.weighted.last >= 0 else None
    return info


def _target(req: Request) -> str:
    return req.path + ("?" + req.query_string if req.query_string else "")


def _action(cr: CompiledRoute, req: Request) -> dict[str, Any] | None:
    """What a redirect or direct-response route answers; None for a forwarding route."""
    authority = req.headers.get("host") or ""
    if cr.redirect is not None:
        rd = cr.redirect
        where = redirect_location(rd, "http", authority, 80, _target(req), cr.prefixes)
        return {
            "reason": REDIRECT,
            "subset": None,
            "redirect": {
                "status": rd.status,
                "location": where,
                "note": "scheme and port as if received on http:80",
            },
        }
    if cr.direct is not None:
        return {
            "reason": DIRECT_RESPONSE,
            "subset": None,
            "direct_response": {
                "status": cr.direct.status,
                "body_bytes": len(cr.direct.body.encode()),
            },
        }
    return None


def _route_answer(cr: CompiledRoute, req: Request, matched: dict[str, Any]) -> dict[str, Any]:
    ans: dict[str, Any] = {"route": cr.name, "service": cr.service, "matched": matched}
    if cr.hosts:
        ans["hosts"] = list(cr.hosts)
    action = _action(cr, req)
    if action is not None:
        return {**ans, **action}
    picked = _pick(cr, req)
    ans["weights"] = dict(zip(cr.weighted.subsets, cr.weighted.weights, strict=True))
    ans["probabilities"] = probabilities(cr.weighted)
    ans.update(picked)
    if cr.sticky_cookie is not None:
        ans["sticky"] = _sticky_info(cr, req, picked)
    if cr.mirrors:
        ans["mirror"] = [{"to": to, "percent": percent} for to, percent in cr.mirrors]
    if cr.rewrite is not None:
        rw = cr.rewrite
        ans["rewrite"] = {"target": rw.target(_target(req), cr.prefixes), "host": rw.host}
    return ans


def explain_request(
    routes: Sequence[CompiledRoute],
    method: str,
    target: str,
    headers: Mapping[str, str],
    cookies: Mapping[str, str],
    client_ip: str,
) -> dict[str, Any]:
    """JSON-able account of the routing of one request (see module docstring)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    req = Request(method.upper(), target, lowered, client_ip)
    if cookies:
        with_cookies(req, cookies)
    skipped: list[dict[str, str]] = []
    for cr in routes:
        matched, why = _route_match(cr, req)
        if matched is None:
            skipped.append({"route": cr.name, "why": why})
            continue
        return {**_route_answer(cr, req, matched), "skipped": skipped}
    return {"route": None, "subset": None, "reason": "no_route", "skipped": skipped}
