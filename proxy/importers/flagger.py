"""Flagger Canary -> a route, two upstreams (primary, canary) and a `canaries:` entry.

Flagger names the stable workload `<target>-primary` and the new one `<target>-canary`; we
keep those names as subsets and take their addresses from `--endpoints` (either the full
name or just `primary` / `canary`). Mode follows Flagger: stepWeight(s) -> canary;
iterations with match -> A/B; iterations alone -> blue-green.
"""

from __future__ import annotations

from typing import Any

from proxy.importers import istio
from proxy.importers.common import (
    Doc,
    Errors,
    Source,
    check_keys,
    duration_text,
    go_duration,
    number,
)

KINDS = ("Canary",)
_SPEC_KEYS = {
    "provider",
    "targetRef",
    "autoscalerRef",
    "ingressRef",
    "service",
    "analysis",
    "progressDeadlineSeconds",
    "skipAnalysis",
    "revertOnDeletion",
}
_ANALYSIS_KEYS = {
    "interval",
    "threshold",
    "maxWeight",
    "stepWeight",
    "stepWeights",
    "iterations",
    "match",
    "metrics",
    "webhooks",
    "sessionAffinity",
}
_SERVICE_KEYS = {
    "port",
    "targetPort",
    "portName",
    "name",
    "gateways",
    "hosts",
    "timeout",
    "retries",
    "headers",
}
_BUILTIN = {"request-success-rate", "request-duration"}
_WEBHOOK_TYPES = {
    "pre-rollout",
    "rollout",
    "confirm-rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
    "event",
}


def _duration(errors: Errors, src: Source, value: Any, path: str) -> str | None:
    seconds = go_duration(value)
    if seconds is None:
        errors.add(src, path, f"{value!r}: not a duration")
        return None
    return duration_text(seconds)


def _metric(errors: Errors, src: Source, m: Any, path: str) -> Doc | None:
    m = m if isinstance(m, dict) else {}
    check_keys(
        errors, src, m, path, {"name", "thresholdRange", "interval", "threshold", "templateRef"}
    )
    name = str(m.get("name", ""))
    if name not in _BUILTIN:
        errors.add(
            src,
            path,
            f"{name}: not supported (only the builtin request-success-rate and request-duration; "
            "a MetricTemplate needs a native `query:`)",
        )
        return None
    out: Doc = {"name": name}
    rng = m.get("thresholdRange") or {}
    if "threshold" in m:  # the pre-1.0 form: a minimum for success rate, a maximum for duration
        rng = {"min" if name == "request-success-rate" else "max": m["threshold"]}
    check_keys(errors, src, rng, f"{path}.thresholdRange", {"min", "max"})
    for bound in ("min", "max"):
        if bound in rng:
            out[bound] = number(float(rng[bound]))
    if "interval" in m:
        out["interval"] = _duration(errors, src, m["interval"], f"{path}.interval")
    return out


def _webhook(errors: Errors, src: Source, w: Any, path: str) -> Doc | None:
    w = w if isinstance(w, dict) else {}
    check_keys(errors, src, w, path, {"name", "type", "url", "timeout", "metadata", "muteAlert"})
    wtype = str(w.get("type", "rollout"))  # Flagger's default type
    if wtype not in _WEBHOOK_TYPES:
        errors.add(src, f"{path}.type", f"{wtype}: unknown webhook type")
        return None
    out: Doc = {"name": str(w.get("name", wtype)), "type": wtype, "url": str(w.get("url", ""))}
    if "timeout" in w:
        out["timeout"] = _duration(errors, src, w["timeout"], f"{path}.timeout")
    if w.get("metadata"):
        out["metadata"] = {str(k): str(v) for k, v in w["metadata"].items()}
    return out


def _mode(a: Doc) -> str:
    if a.get("stepWeight") or a.get("stepWeights"):
        return "canary"
    if a.get("iterations"):
        return "ab" if a.get("match") else "blue-green"
    return "canary"


def _analysis(errors: Errors, src: Source, a: Doc, route: Doc) -> Doc:
    check_keys(errors, src, a, "spec.analysis", _ANALYSIS_KEYS)
    out: Doc = {}
    if "interval" in a:
        out["interval"] = _duration(errors, src, a["interval"], "spec.analysis.interval")
    for ours, theirs in (("threshold", "threshold"), ("iterations", "iterations")):
        if theirs in a:
            out[ours] = int(a[theirs])
    for ours, theirs in (("max_weight", "maxWeight"), ("step_weight", "stepWeight")):
        if theirs in a:
            out[ours] = number(float(a[theirs]))
    if a.get("stepWeights"):
        out["step_weights"] = [number(float(w)) for w in a["stepWeights"]]
    if a.get("match"):
        out["match"] = [
            istio.convert_match(errors, src, m, f"spec.analysis.match[{i}]")
            for i, m in enumerate(a["match"])
        ]
    metrics = [
        _metric(errors, src, m, f"spec.analysis.metrics[{i}]")
        for i, m in enumerate(a.get("metrics") or [])
    ]
    out["metrics"] = [m for m in metrics if m]
    hooks = [
        _webhook(errors, src, w, f"spec.analysis.webhooks[{i}]")
        for i, w in enumerate(a.get("webhooks") or [])
    ]
    out["webhooks"] = [w for w in hooks if w]
    _session_affinity(errors, src, a.get("sessionAffinity"), route)
    return out


def _session_affinity(errors: Errors, src: Source, s: Any, route: Doc) -> None:
    """Flagger pins a user to the canary with a cookie: our sticky cookie does the same."""
    if not isinstance(s, dict):
        return
    check_keys(errors, src, s, "spec.analysis.sessionAffinity", {"cookieName", "maxAge"})
    route["sticky"] = {
        "cookie": str(s.get("cookieName", "flagger-cookie")),
        "max_age": int(s.get("maxAge", 86400)),
    }


def _service(errors: Errors, src: Source, svc: Any, route: Doc) -> None:
    svc = svc if isinstance(svc, dict) else {}
    check_keys(errors, src, svc, "spec.service", _SERVICE_KEYS)
    if "timeout" in svc:
        route["timeout"] = _duration(errors, src, svc["timeout"], "spec.service.timeout")
    if svc.get("retries"):
        route["retries"] = istio.convert_retries(
            errors, src, svc["retries"], "spec.service.retries"
        )
    if svc.get("headers"):
        route["headers"] = istio.convert_header_ops(
            errors, src, svc["headers"], "spec.service.headers"
        )


def translate(src: Source, errors: Errors) -> tuple[Doc, Doc, tuple[str, str]]:
    """One Canary -> (route, canary entry, (stable subset, canary subset))."""
    spec = src.spec
    check_keys(errors, src, spec, "spec", _SPEC_KEYS)
    if spec.get("skipAnalysis"):
        errors.add(src, "spec.skipAnalysis", "not supported (promote with `rollout promote`)")
    target = str((spec.get("targetRef") or {}).get("name") or src.name)
    stable, canary = f"{target}-primary", f"{target}-canary"
    route: Doc = {
        "name": target,
        "route": [{"destination": stable, "weight": 100}, {"destination": canary, "weight": 0}],
    }
    _service(errors, src, spec.get("service"), route)
    analysis = _analysis(errors, src, spec.get("analysis") or {}, route)
    if "progressDeadlineSeconds" in spec:
        analysis["progress_deadline"] = duration_text(float(spec["progressDeadlineSeconds"]))
    entry: Doc = {
        "name": src.name,
        "route": target,
        "stable": stable,
        "canary": canary,
        "mode": _mode(spec.get("analysis") or {}),
        "analysis": analysis,
    }
    return route, entry, (stable, canary)


def endpoints_for(name: str, endpoints: dict[str, list[str]]) -> list[str]:
    """`podinfo-primary` may be given as itself, or as `primary` (or `stable`) for short."""
    if name in endpoints:
        return endpoints[name]
    short = name.rsplit("-", 1)[-1]
    aliases = {"primary": ("primary", "stable"), "canary": ("canary",)}.get(short, ())
    return next((endpoints[a] for a in aliases if a in endpoints), [])
