"""docs/coming-from.md keeps one "not supported" list and one "ignored" list, equal to the
importers' tables; and every table entry is what the importer really does with the field."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import pytest
import yaml

from proxy.importers import import_manifests
from proxy.importers.tables import TABLES, rows

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "coming-from.md"


def _section(title: str) -> set[tuple[str, str, str, str]]:
    text = DOC.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    out = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 4 and cells[2].startswith("`"):
            out.add((cells[0], cells[1], cells[2].strip("`"), cells[3]))
    return out


def test_the_not_supported_list_is_the_refused_tables() -> None:
    assert _section("Not supported (refused)") == rows(1)


def test_the_ignored_list_is_the_ignored_tables() -> None:
    assert _section("Ignored (Kubernetes wiring)") == rows(0)


def test_the_doc_has_one_list_of_each() -> None:
    text = DOC.read_text()
    assert text.count("\n## Not supported (refused)\n") == 1
    assert text.count("\n## Ignored (Kubernetes wiring)\n") == 1


# --- every entry, tried: a minimal manifest with the field set --------------------------

_VS = {
    "kind": "VirtualService",
    "metadata": {"name": "t"},
    "spec": {
        "hosts": ["t"],
        "http": [
            {
                "match": [{"uri": {"prefix": "/"}}],
                "route": [{"destination": {"host": "t", "subset": "v1"}}],
                "mirrors": [{"destination": {"host": "t", "subset": "v1"}}],
                "fault": {"abort": {"httpStatus": 503}, "delay": {"fixedDelay": "1s"}},
            }
        ],
    },
}
_BASES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("all", "every kind"): [_VS],
    ("istio", "VirtualService"): [_VS],
    ("istio", "DestinationRule"): [{
        "kind": "DestinationRule", "metadata": {"name": "t"},
        "spec": {"host": "t", "trafficPolicy": {"connectionPool": {"http": {}}},
                 "subsets": [{"name": "v1", "trafficPolicy": {"connectionPool": {"http": {}}}}]},
    }],
    ("gateway", "HTTPRoute"): [{
        "kind": "HTTPRoute", "metadata": {"name": "t"},
        "spec": {"rules": [{
            "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "b"}}}],
            "backendRefs": [{"name": "b", "filters": []}],
        }]},
    }],
    ("gateway", "Gateway"): [{
        "kind": "Gateway", "metadata": {"name": "t"},
        "spec": {"listeners": [{"name": "l", "port": 80}]},
    }],
    ("flagger", "Canary"): [{
        "kind": "Canary", "metadata": {"name": "t"},
        "spec": {"targetRef": {"name": "t"}, "service": {"port": 80},
                 "analysis": {"sessionAffinity": {"cookieName": "c"},
                              "webhooks": [{"name": "w", "url": "http://x/"}]}},
    }],
    ("flagger", "MetricTemplate"): [{
        "kind": "MetricTemplate", "metadata": {"name": "t"},
        "spec": {"provider": {"type": "prometheus", "address": "http://p/"}, "query": "1"},
    }],
    ("flagger", "Ingress"): [
        {"kind": "Canary", "metadata": {"name": "c"},
         "spec": {"provider": "nginx", "targetRef": {"name": "s"}, "ingressRef": {"name": "t"},
                  "service": {"port": 80}}},
        {"kind": "Ingress", "metadata": {"name": "t", "annotations": {}}, "spec": {"rules": []}},
    ],
    ("ingress-nginx", "Ingress"): [{
        "kind": "Ingress", "metadata": {"name": "t", "annotations": {}},
        "spec": {"tls": [{"hosts": ["h"]}], "rules": [{"host": "h", "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "s", "port": {"number": 80}}}}]}}]},
    }],
}  # fmt: skip
_IMPORTER = {"all": "istio"}


def _set(doc: dict[str, Any], path: str) -> str:
    """Set the field `path` (indices blanked) in `doc`; the concrete path it got."""
    if path.startswith("metadata.annotations.") and path != "metadata.annotations":
        key = path[len("metadata.annotations.") :].replace("/*", "/configuration-snippet")
        doc["metadata"]["annotations"][key] = "x"
        return f"metadata.annotations.{key}"
    parts = path.replace("[]", ".[]").split(".")
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        if part == "[]":
            node = node[0]
        else:
            node = node.setdefault(part, [{}] if parts[i + 1] == "[]" else {})
    node[parts[-1]] = {"x": 1}
    return path.replace("[]", "[0]")


def _cases(which: int) -> list[tuple[str, str, str, str]]:
    out = []
    for importer, kinds in TABLES.items():
        for kind, tables in kinds.items():
            for path, why in tables[which].items():
                if "(" not in path and ".type." not in path:  # pseudo keys: tested by hand
                    out.append((importer, kind, path, why))
    return out


def _run(tmp_path: pathlib.Path, importer: str, kind: str, path: str) -> tuple[Any, str]:
    docs = copy.deepcopy(_BASES[(importer, kind)])
    target = next(d for d in docs if importer == "all" or d["kind"] == kind)
    concrete = _set(target, path)
    file = tmp_path / "m.yaml"
    file.write_text(yaml.safe_dump_all(docs))
    got = import_manifests(
        _IMPORTER.get(importer, importer),
        [str(file)],
        "t-v1=127.0.0.1:1,b=127.0.0.1:1,s=127.0.0.1:1",
    )
    return got, f"{file}: {target['kind']}/{target['metadata']['name']}: {concrete}: "


@pytest.mark.parametrize(("importer", "kind", "path", "why"), _cases(1), ids=lambda v: str(v)[:60])
def test_each_refused_field_is_refused(tmp_path, importer, kind, path, why) -> None:
    got, where = _run(tmp_path, importer, kind, path)
    assert f"{where}not supported: {why}" in got.errors, got.errors


@pytest.mark.parametrize(("importer", "kind", "path", "why"), _cases(0), ids=lambda v: str(v)[:60])
def test_each_ignored_field_is_noted(tmp_path, importer, kind, path, why) -> None:
    got, where = _run(tmp_path, importer, kind, path)
    assert f"{where}ignored: {why}" in got.notes, got.notes
