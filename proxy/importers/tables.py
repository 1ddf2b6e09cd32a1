"""Every importer's tables of ignored and refused fields, by importer and kind.

docs/coming-from.md prints exactly these (a test keeps the two equal), so a field that
changes from refused to translated leaves the doc's "not supported" list with it.
"""

from __future__ import annotations

from proxy.importers import (
    destination_rule,
    flagger,
    flagger_ingress,
    flagger_templates,
    gateway,
    gateway_listeners,
    ingress_annotations,
    istio,
)
from proxy.importers.common import METADATA, Table

# importer -> kind -> (ignored, refused)
TABLES: dict[str, dict[str, tuple[Table, Table]]] = {
    "all": {"every kind": (METADATA, {})},
    "istio": {
        "VirtualService": (istio.IGNORED, istio.REFUSED),
        "DestinationRule": (destination_rule.IGNORED, destination_rule.REFUSED),
    },
    "gateway": {
        "HTTPRoute": ({**gateway.IGNORED, **gateway_listeners.ROUTE_IGNORED}, gateway.REFUSED),
        "Gateway": (gateway_listeners.IGNORED, gateway_listeners.REFUSED),
    },
    "flagger": {
        "Canary": (flagger.IGNORED, flagger.REFUSED),
        "MetricTemplate": (flagger_templates.IGNORED, flagger_templates.REFUSED),
        "Ingress": (flagger_ingress.IGNORED, flagger_ingress.REFUSED),
    },
    "ingress-nginx": {"Ingress": (ingress_annotations.IGNORED, ingress_annotations.REFUSED)},
}


def rows(which: int) -> set[tuple[str, str, str, str]]:
    """(importer, kind, field, why) of the ignored (0) or refused (1) tables."""
    return {
        (importer, kind, path, why)
        for importer, kinds in TABLES.items()
        for kind, tables in kinds.items()
        for path, why in tables[which].items()
    }
