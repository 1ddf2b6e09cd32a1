"""A Flagger Canary's `analysis` -> our canary `analysis`: steps, metrics, webhooks.

Metrics: `request-success-rate` and `request-duration` are Flagger's builtins and ours;
`error-rate` is ours (Flagger has no builtin of that name; the seed manifests use it);
a `templateRef` to a MetricTemplate among the files becomes a check with its PromQL, the
template's variables filled in (flagger_templates).
"""

from __future__ import annotations

from typing import Any

from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    duration,
    to_num,
)
from proxy.importers.flagger_match import ab_match
from proxy.importers.flagger_templates import Templates, render

IGNORED: Table = {
    "spec.analysis.primaryReadyThreshold": "pod readiness of the primary Deployment",
    "spec.analysis.canaryReadyThreshold": "pod readiness of the canary Deployment",
    "spec.analysis.webhooks[].muteAlert": "Flagger alert providers are not imported",
}
REFUSED: Table = {
    "spec.analysis.stepWeightPromotion": "promotion is one step (rollout promote)",
    "spec.analysis.mirror": "mirroring to the canary during analysis (use a route `mirror:`)",
    "spec.analysis.mirrorWeight": "mirroring to the canary during analysis",
    "spec.analysis.alerts": "AlertProviders are Kubernetes objects: write `alerts:` by hand",
    "spec.analysis.sessionAffinity.primaryCookieName": "one sticky cookie per route",
    "spec.analysis.sessionAffinity.domain": "sticky cookie attributes",
    "spec.analysis.sessionAffinity.path": "sticky cookie attributes",
    "spec.analysis.sessionAffinity.sameSite": "sticky cookie attributes",
    "spec.analysis.sessionAffinity.secure": "sticky cookie attributes",
    "spec.analysis.sessionAffinity.httpOnly": "sticky cookie attributes (always HttpOnly)",
    "spec.analysis.sessionAffinity.partitioned": "sticky cookie attributes",
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
_BUILTIN = {"request-success-rate", "request-duration", "error-rate"}
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


class Analysis:
    """Translating one Canary's analysis; `provider` collects a MetricTemplate's address."""

    def __init__(self, report: Report, src: Source, templates: Templates, model: dict[str, str]):
        self.report, self.src, self.templates, self.model = report, src, templates, model
        self.provider: Doc | None = None

    def translate(self, a: Doc, provider: str, route: Doc) -> Doc | None:
        report, src = self.report, self.src
        check_keys(report, src, a, "spec.analysis", _ANALYSIS_KEYS, IGNORED, REFUSED)
        out: Doc = {}
        if "interval" in a:
            interval = duration(report, src, a["interval"], "spec.analysis.interval")
            if interval:
                out["interval"] = interval
        for key in ("threshold", "iterations"):
            if key in a:
                out[key] = to_num(report, src, a[key], f"spec.analysis.{key}", integer=True)
        for ours, theirs in (("max_weight", "maxWeight"), ("step_weight", "stepWeight")):
            if theirs in a:
                out[ours] = to_num(report, src, a[theirs], f"spec.analysis.{theirs}")
        if a.get("stepWeights"):
            out["step_weights"] = [
                to_num(report, src, w, f"spec.analysis.stepWeights[{i}]")
                for i, w in enumerate(as_list(a["stepWeights"]))
            ]
        if a.get("match"):
            match = ab_match(report, src, provider, a["match"])
            if match is None:
                return None  # an A/B test without its audience would test everyone
            out["match"] = match
        metrics = [
            self._metric(m, f"spec.analysis.metrics[{i}]")
            for i, m in enumerate(as_list(a.get("metrics")))
        ]
        out["metrics"] = [m for m in metrics if m]
        hooks = [
            _webhook(report, src, w, f"spec.analysis.webhooks[{i}]")
            for i, w in enumerate(as_list(a.get("webhooks")))
        ]
        out["webhooks"] = [w for w in hooks if w]
        if self.provider:
            out["provider"] = self.provider
        _session_affinity(report, src, a.get("sessionAffinity"), route)
        return out

    def _metric(self, m: Any, path: str) -> Doc | None:
        report, src = self.report, self.src
        m = as_dict(m)
        known = {
            "name",
            "thresholdRange",
            "interval",
            "threshold",
            "templateRef",
            "templateVariables",
        }
        check_keys(report, src, m, path, known)
        name = str(m.get("name", ""))
        out: Doc = {"name": name}
        if m.get("templateRef"):
            query = self._template_query(m, path)
            if query is None:
                return None
            out["query"] = query
        elif name not in _BUILTIN:
            builtin = ", ".join(sorted(_BUILTIN))
            report.add(src, path, f"{name}: not supported: neither a builtin ({builtin}) nor "
                       "a templateRef to a MetricTemplate among the files")  # fmt: skip
            return None
        elif name == "error-rate":
            report.note(src, path, "error-rate: canaryproxy's builtin (percent of 5xx); "
                        "Flagger itself has no builtin of that name")  # fmt: skip
        rng = as_dict(m.get("thresholdRange"))
        if "threshold" in m:  # the pre-1.0 form: a minimum for success rate, else a maximum
            rng = {"min" if name == "request-success-rate" else "max": m["threshold"]}
        check_keys(report, src, rng, f"{path}.thresholdRange", {"min", "max"})
        for bound in ("min", "max"):
            if bound in rng:
                out[bound] = to_num(report, src, rng[bound], f"{path}.thresholdRange.{bound}")
        if "interval" in m:
            interval = duration(report, src, m["interval"], f"{path}.interval")
            if interval:
                out["interval"] = interval
        return out

    def _template_query(self, m: Doc, path: str) -> str | None:
        report, src = self.report, self.src
        ref = as_dict(m["templateRef"])
        template = self.templates.find(ref, self.model["namespace"])
        if template is None:
            report.add(src, f"{path}.templateRef", f"{ref.get('name')}: no such MetricTemplate "
                       "among the files (pass it with the Canary)")  # fmt: skip
            return None
        model = {**self.model, "interval": str(m.get("interval") or "1m")}
        variables = {str(k): str(v) for k, v in as_dict(m.get("templateVariables")).items()}
        query = render(report, src, f"{path}.templateRef", template, model, variables)
        provider = {"type": "prometheus", "address": template.address}
        if self.provider not in (None, provider):
            report.add(src, f"{path}.templateRef", f"{template.address}: a second Prometheus "
                       "address: one analysis queries one provider")  # fmt: skip
            return None
        if self.provider is None:
            report.note(src, f"{path}.templateRef", f"analysis provider: prometheus at "
                        f"{template.address}: every check, builtin ones too, queries it, so it "
                        "must scrape this proxy")  # fmt: skip
        self.provider = provider
        return query


def _webhook(report: Report, src: Source, w: Any, path: str) -> Doc | None:
    w = as_dict(w)
    known = {"name", "type", "url", "timeout", "metadata"}
    check_keys(report, src, w, path, known, IGNORED)
    wtype = str(w.get("type", "rollout"))  # Flagger's default type
    if wtype not in _WEBHOOK_TYPES:
        report.add(src, f"{path}.type", f"{wtype}: unknown webhook type")
        return None
    out: Doc = {"name": str(w.get("name", wtype)), "type": wtype, "url": str(w.get("url", ""))}
    if "timeout" in w:
        timeout = duration(report, src, w["timeout"], f"{path}.timeout")
        if timeout:
            out["timeout"] = timeout
    if w.get("metadata"):
        out["metadata"] = {str(k): str(v) for k, v in as_dict(w["metadata"]).items()}
    return out


def _session_affinity(report: Report, src: Source, s: Any, route: Doc) -> None:
    """Flagger pins a user to the canary with a cookie: our sticky cookie does the same."""
    if not isinstance(s, dict):
        return
    check_keys(
        report, src, s, "spec.analysis.sessionAffinity", {"cookieName", "maxAge"}, refused=REFUSED
    )
    route["sticky"] = {
        "cookie": str(s.get("cookieName", "flagger-cookie")),
        "max_age": to_num(
            report, src, s.get("maxAge", 86400), "spec.analysis.sessionAffinity.maxAge", True
        ),
    }


def mode(a: Doc) -> str:
    """Flagger's: stepWeight(s) -> canary; iterations with match -> A/B; alone blue-green."""
    if a.get("stepWeight") or a.get("stepWeights"):
        return "canary"
    if a.get("iterations"):
        return "ab" if a.get("match") else "blue-green"
    return "canary"
