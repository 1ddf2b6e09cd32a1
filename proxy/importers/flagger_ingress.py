"""The Ingress a Flagger Canary with `provider: nginx` names in `ingressRef`, when it is among
the files: its hosts become the route's `hosts`.

Flagger copies that Ingress into `<name>-canary` with the apex Service replaced by the canary
Service, so the canary shares the main Ingress's hosts and paths. Only hosts whose paths
(served by the apex Service) are all `/` are taken; other paths, and nginx annotations, are
for `canaryproxy import ingress-nginx`, and refused here.
"""

from __future__ import annotations

from proxy.importers.common import (
    Report,
    Source,
    Table,
    as_dict,
    as_list,
    check_keys,
    check_metadata,
)

KINDS = ("Ingress",)
IGNORED: Table = {
    "spec.ingressClassName": "which controller serves the Ingress",
    "spec.tls": "certificates live in Secrets; serve https with a TLS listener (SPEC §6)",
    "metadata.annotations.kubernetes.io/ingress.class": "which controller serves the Ingress",
    "metadata.annotations.(not nginx.ingress.kubernetes.io/)": "not read by ingress-nginx",
}
REFUSED: Table = {
    "metadata.annotations.nginx.ingress.kubernetes.io/*": "import the Ingress with "
    "`canaryproxy import ingress-nginx`",
}


class Ingresses:
    """Ingresses of the file set, by `namespace/name`."""

    def __init__(self, sources: list[Source]) -> None:
        self.by_key = {
            f"{s.namespace or 'default'}/{s.name}": s for s in sources if s.kind == "Ingress"
        }
        self.used: set[str] = set()

    def hosts(self, report: Report, canary: Source, name: str, apex: str) -> list[str] | None:
        """The hosts of the referenced Ingress that route to `apex`; None when absent."""
        key = f"{canary.namespace or 'default'}/{name}"
        src = self.by_key.get(key)
        if src is None:
            return None
        self.used.add(key)
        check_keys(report, src, src.spec, "spec", {"rules"}, IGNORED)
        check_metadata(report, src, frozenset({"annotations"}))
        meta = as_dict(src.doc.get("metadata"))
        for ann in as_dict(meta.get("annotations")):
            path = f"metadata.annotations.{ann}"
            if path in IGNORED:
                report.ignored(src, path, IGNORED)
            elif not ann.startswith("nginx.ingress.kubernetes.io/"):
                why = IGNORED["metadata.annotations.(not nginx.ingress.kubernetes.io/)"]
                report.note(src, path, f"ignored: {why}")
            else:
                report.add(src, path, f"not supported: {next(iter(REFUSED.values()))}")
        hosts: list[str] = []
        for r, rule in enumerate(as_list(src.spec.get("rules"))):
            for p, item in enumerate(as_list(as_dict(as_dict(rule).get("http")).get("paths"))):
                service = as_dict(as_dict(as_dict(item).get("backend")).get("service"))
                if service.get("name") != apex:
                    continue
                if str(as_dict(item).get("path") or "/") != "/":
                    where = f"spec.rules[{r}].http.paths[{p}].path"
                    why = "a path other than /: import the Ingress with `import ingress-nginx`"
                    report.add(src, where, why)
                host = str(as_dict(rule).get("host") or "")
                if host and host not in hosts:
                    hosts.append(host)
        return hosts

    def note_unused(self, report: Report) -> None:
        for key, src in self.by_key.items():
            if key not in self.used:
                report.note(src, "metadata.name", "no Canary's ingressRef names it: not imported")
