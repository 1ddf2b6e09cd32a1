"""Flagger Canary -> a route, two upstreams (primary, canary) and a `canaries:` entry.

Flagger names the stable workload `<target>-primary` and the new one `<target>-canary`; we
keep those names as subsets. Their addresses default to the Services Flagger creates,
`<service>-primary.<namespace>:<port>` and `<service>-canary.<namespace>:<port>` (service
name = `service.name` or the target, namespace from metadata, default `default`, port from
`service.port`), with a note; `--endpoints` overrides them by the full name or just
`primary` / `canary`. Mode follows Flagger: stepWeight(s) -> canary; iterations with match
-> A/B; iterations alone -> blue-green. The A/B audience is read the way the Canary's
`provider` applies it (flagger_match).
"""

from __future__ import annotations

from typing import Any

from proxy.importers import flagger_analysis
from proxy.importers.bind import Wanted
from proxy.importers.common import (
    Doc,
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
    duration,
    duration_text,
    to_num,
)
from proxy.importers.flagger_ingress import Ingresses
from proxy.importers.flagger_templates import Templates
from proxy.importers.istio_match import convert_header_ops, convert_matches, convert_retries

KINDS = ("Canary", "MetricTemplate", "Ingress")
_WIRING = "labels and annotations of the Kubernetes objects Flagger generates"
IGNORED: Table = {
    "spec.targetRef.apiVersion": "the API of the workload Flagger scales (its name names the "
    "route and its subsets)",
    "spec.targetRef.kind": "the kind of the workload Flagger scales (its name names the route "
    "and its subsets)",
    "spec.autoscalerRef": "the HorizontalPodAutoscaler Flagger copies for the primary",
    "spec.ingressRef": "the Ingress Flagger copies for the canary, not among the files: the "
    "route answers every Host (pass the Ingress too)",
    "spec.routeRef": "the APISIX route Flagger manages",
    "spec.upstreamRef": "the Gloo upstream Flagger copies",
    "spec.revertOnDeletion": "what Flagger does to Kubernetes objects when the Canary goes",
    "spec.metricsServer": "where Flagger sends its builtin queries; the builtin checks here "
    "count the proxy's own requests",
    "spec.service.targetPort": "the pods' port behind Flagger's Services",
    "spec.service.portName": "the name of the Services' port",
    "spec.service.portDiscovery": "extra pod ports Flagger copies into its Services",
    "spec.service.appProtocol": "the Services' protocol hint",
    "spec.service.trafficDistribution": "a Kubernetes Service topology hint",
    "spec.service.headless": "headless Kubernetes Services",
    "spec.service.trafficPolicy": "the mesh's DestinationRule policy between sidecars (mTLS "
    "mode, load balancer); here the proxy connects to the endpoints itself",
    "spec.service.gateways": "which Istio gateways serve Flagger's VirtualService",
    "spec.service.gatewayRefs": "which Gateways serve Flagger's HTTPRoute",
    "spec.service.meshName": "the App Mesh mesh",
    "spec.service.backends": "App Mesh virtual node backends",
    "spec.service.apex": _WIRING,
    "spec.service.primary": _WIRING,
    "spec.service.canary": _WIRING,
    "spec.service.unmanagedMetadata": _WIRING,
    **flagger_analysis.IGNORED,
}
REFUSED: Table = {
    "spec.skipAnalysis": "promote by hand with `canaryproxy rollout promote`",
    "spec.suspend": "a suspended Canary: leave it out of the import",
    "spec.service.corsPolicy": "CORS answers",
    "spec.service.rewrite": "write the route's `rewrite:` by hand",
    "spec.service.mirror": "write the route's `mirror:` by hand",
    "spec.service.delegation": "delegate VirtualServices",
    **flagger_analysis.REFUSED,
}
_SPEC_KEYS = {
    "webhooks",
    "provider",
    "targetRef",
    "service",
    "analysis",
    "canaryAnalysis",
    "progressDeadlineSeconds",
}
_SERVICE_KEYS = {
    "name",
    "port",
    "hosts",
    "match",
    "timeout",
    "backendTimeout",
    "retries",
    "headers",
}


class Canary:
    """One Canary being translated."""

    def __init__(
        self, report: Report, src: Source, templates: Templates, ingresses: Ingresses
    ) -> None:
        self.report, self.src, self.templates, self.ingresses = report, src, templates, ingresses
        spec = src.spec
        self.svc = as_dict(spec.get("service"))
        self.target = str(as_dict(spec.get("targetRef")).get("name") or src.name)
        self.apex = str(self.svc.get("name") or self.target)
        self.namespace = src.namespace or "default"
        self.provider = str(spec.get("provider") or "")
        self.ingress_hosts: list[str] = []

    def translate(self) -> tuple[Doc, Doc, list[Wanted]] | None:
        """(route, canary entry, upstreams) or None when the Canary cannot be honoured."""
        report, src, spec = self.report, self.src, self.src.spec
        mark = report.mark()
        ingress = as_dict(spec.get("ingressRef")).get("name")
        known = _SPEC_KEYS | (
            {"ingressRef"} if ingress and self._ingress_hosts(str(ingress)) else set()
        )
        check_keys(report, src, spec, "spec", known, IGNORED, REFUSED)
        check_metadata(report, src, frozenset({"namespace"}))
        check_keys(report, src, spec.get("targetRef"), "spec.targetRef", {"name"}, IGNORED)
        stable, canary = f"{self.target}-primary", f"{self.target}-canary"
        route: Doc = {"name": self.target}
        self._service(route)
        route["route"] = [
            {"destination": stable, "weight": 100},
            {"destination": canary, "weight": 0},
        ]
        a = as_dict(spec.get("analysis") or spec.get("canaryAnalysis"))
        if "webhooks" in spec and "webhooks" not in a:
            report.note(src, "spec.webhooks", "read as spec.analysis.webhooks, where Flagger "
                        "has them (Kubernetes would drop the field here)")  # fmt: skip
            a = {**a, "webhooks": spec["webhooks"]}
        if a.get("match") and "provider" not in spec:
            report.note(src, "spec.provider", "not given: the A/B match is read as Flagger's "
                        "default provider, istio, applies it")  # fmt: skip
        model = self._model()
        analysis = flagger_analysis.Analysis(report, src, self.templates, model).translate(
            a, self.provider, route
        )
        if analysis is None or (report.since(mark) and spec.get("skipAnalysis")):
            return None
        if "progressDeadlineSeconds" in spec:
            secs = to_num(
                report, src, spec["progressDeadlineSeconds"], "spec.progressDeadlineSeconds"
            )
            if secs is not None:
                analysis["progress_deadline"] = duration_text(secs)
        entry: Doc = {"name": src.name, "route": self.target, "stable": stable, "canary": canary}
        entry["mode"] = flagger_analysis.mode(a)
        entry["analysis"] = analysis
        return route, entry, [self._wanted(stable, "primary", ("primary", "stable")),
                              self._wanted(canary, "canary", ("canary",))]  # fmt: skip

    def _ingress_hosts(self, name: str) -> bool:
        """Take the hosts of the Ingress `ingressRef` names, if it is among the files."""
        hosts = self.ingresses.hosts(self.report, self.src, name, self.apex)
        if hosts is None:
            return False
        self.ingress_hosts = hosts
        return True

    def _model(self) -> dict[str, str]:
        spec = self.src.spec
        return {
            "name": self.src.name,
            "namespace": self.namespace,
            "target": self.target,
            "service": self.apex,
            "ingress": str(as_dict(spec.get("ingressRef")).get("name") or self.target),
            "route": str(as_dict(spec.get("routeRef")).get("name") or self.target),
        }

    def _wanted(self, name: str, role: str, aliases: tuple[str, ...]) -> Wanted:
        port = self.svc.get("port")
        default = (f"{self.apex}-{role}.{self.namespace}:{port}",) if port else ()
        note = ""
        if default and role == "primary":
            note = (f"endpoints default to Flagger's Services {self.apex}-primary.{self.namespace}:"
                    f"{port} and {self.apex}-canary.{self.namespace}:{port}; --endpoints "
                    "primary=HOST:PORT,canary=HOST:PORT overrides them")  # fmt: skip
        hint = f"pass --endpoints {name}=HOST:PORT (or {role}=HOST:PORT)"
        return Wanted(
            name,
            self.src,
            "spec.service.port",
            aliases,
            default=default,
            default_note=note,
            hint=hint,
        )

    def _service(self, route: Doc) -> None:
        report, src, svc = self.report, self.src, self.svc
        check_keys(report, src, svc, "spec.service", _SERVICE_KEYS, IGNORED, REFUSED)
        hosts = [str(h) for h in as_list(svc.get("hosts")) if h != "*"] or self.ingress_hosts
        if hosts and self.provider in ("", "istio") and self.apex not in hosts:
            hosts.append(self.apex)  # Flagger's VirtualService also answers the Service name
        if hosts:
            route["hosts"] = hosts
        elif self.provider != "nginx" or not self.src.spec.get("ingressRef"):
            report.note(src, "spec.service.hosts", "not given: the route answers every Host")
        if svc.get("match"):
            match = self._service_match(svc["match"])
            if match:
                route["match"] = match
        timeout = svc.get("timeout") or svc.get("backendTimeout")
        if timeout:
            value = duration(report, src, timeout, "spec.service.timeout")
            if value:
                route["timeout"] = value
        retries = (
            convert_retries(report, src, svc["retries"], "spec.service.retries")
            if svc.get("retries")
            else None
        )
        if retries:
            route["retries"] = retries
        if svc.get("headers"):
            route["headers"] = convert_header_ops(
                report, src, svc["headers"], "spec.service.headers"
            )

    def _service_match(self, items: Any) -> list[Doc] | None:
        if self.provider == "nginx" or not (
            self.provider in ("", "istio") or self.provider.startswith("gatewayapi")
        ):
            self.report.add(
                self.src, "spec.service.match", f"not read by Flagger's {self.provider} router"
            )
            return None
        match = convert_matches(self.report, self.src, items, "spec.service.match")
        if match and self.provider.startswith("gatewayapi"):
            return [item for m in match for item in _element_wise(m)]
        return match


def _element_wise(m: Doc) -> list[Doc]:
    """Flagger's gatewayapi router makes a uri prefix a PathPrefix: whole path elements."""
    prefix = (m.get("path") or {}).get("prefix")
    if prefix is None or not prefix.rstrip("/"):
        return [m]
    stem = prefix.rstrip("/")
    return [{**m, "path": {"exact": stem}}, {**m, "path": {"prefix": stem + "/"}}]


def translate(sources: list[Source], report: Report) -> tuple[list[Doc], list[Doc], list[Wanted]]:
    """Every Canary -> (routes, canaries, upstreams to bind)."""
    templates, ingresses = Templates(report, sources), Ingresses(sources)
    routes, canaries, wanted = [], [], []
    for src in sources:
        if src.kind == "Canary":
            got = Canary(report, src, templates, ingresses).translate()
            if got:
                routes.append(got[0])
                canaries.append(got[1])
                wanted.extend(got[2])
    templates.note_unused(report)
    ingresses.note_unused(report)
    return routes, canaries, wanted
