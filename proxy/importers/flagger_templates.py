"""Flagger MetricTemplates (Prometheus provider) -> checks with their query filled in.

Flagger renders a template's query with Go's text/template and these variables: `name`
(the Canary's), `namespace`, `target` (targetRef.name), `service` (service.name, else the
target), `ingress` (ingressRef.name, else the target), `route` (routeRef.name, else the
target), `interval` (the metric's, default `1m`) and `variables.KEY` (the metric's
templateVariables). We fill them in at import, so the check's query is plain PromQL; any
other template action is refused. The template's Prometheus address becomes the analysis
`provider`: then every check, the builtin ones too, is a query there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.importers.common import Doc, Report, Source, Table, as_dict, check_keys, check_metadata

KINDS = ("MetricTemplate",)
IGNORED: Table = {}
REFUSED: Table = {
    "spec.provider.secretRef": "Prometheus credentials live in a Secret; not supported",
    "spec.provider.headers": "extra headers to the metrics server",
    "spec.provider.insecureSkipVerify": "skipping TLS verification of the metrics server",
    "spec.provider.region": "cloud metric providers",
}
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


@dataclass
class Template:
    src: Source
    query: str
    address: str
    used: bool = False


class Templates:
    """MetricTemplates of the file set, by `namespace/name`."""

    def __init__(self, report: Report, sources: list[Source]) -> None:
        self.by_key: dict[str, Template] = {}
        for src in sources:
            if src.kind == "MetricTemplate":
                self._add(report, src)

    def _add(self, report: Report, src: Source) -> None:
        spec = src.spec
        check_keys(report, src, spec, "spec", {"provider", "query"})
        check_metadata(report, src, frozenset({"namespace"}))
        provider = as_dict(spec.get("provider"))
        check_keys(report, src, provider, "spec.provider", {"type", "address"}, refused=REFUSED)
        if provider.get("type", "prometheus") != "prometheus":
            report.add(src, "spec.provider.type", f"{provider.get('type')}: only prometheus")
            return
        if not provider.get("address"):
            report.add(src, "spec.provider.address", "is required")
            return
        key = f"{src.namespace or 'default'}/{src.name}"
        self.by_key[key] = Template(src, str(spec.get("query", "")), str(provider["address"]))

    def find(self, ref: Doc, namespace: str) -> Template | None:
        key = f"{ref.get('namespace') or namespace}/{ref.get('name')}"
        found = self.by_key.get(key)
        if found:
            found.used = True
        return found

    def note_unused(self, report: Report) -> None:
        for t in self.by_key.values():
            if not t.used:
                report.note(t.src, "metadata.name", "no Canary metric references it: not imported")


def render(
    report: Report,
    src: Source,
    path: str,
    template: Template,
    model: dict[str, str],
    variables: dict[str, str],
) -> str | None:
    """The template's query with every variable filled in, or None (refused)."""
    bad: list[str] = []

    def value(m: re.Match[str]) -> str:
        action = m.group(1)
        if action in model:
            return model[action]
        if action.startswith("variables.") and action[10:] in variables:
            return variables[action[10:]]
        bad.append(action)
        return m.group(0)

    query = _ACTION.sub(value, template.query)
    for action in bad:
        report.add(src, path, f"MetricTemplate {template.src.name}: {{{{ {action} }}}}: "
                   "unknown template variable")  # fmt: skip
    return None if bad else query.strip()
