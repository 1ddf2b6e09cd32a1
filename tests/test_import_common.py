"""Importer test helpers (translate a manifest, load the result) and tests of common.py."""

from __future__ import annotations

import pathlib

import pytest

from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.importers import translate
from proxy.importers.common import ImportFailed, dump_config, go_duration, parse_endpoints
from proxy.routing.table import RoutingTable, build_table

MANIFESTS = pathlib.Path(__file__).parent / "manifests"


def manifest(name: str) -> str:
    return str(MANIFESTS / name)


def imported(kind: str, name: str, endpoints: str) -> Config:
    """Translate one manifest file and load the output exactly as `serve` would."""
    doc, errors = translate(kind, [manifest(name)], endpoints)
    assert errors == [] and doc is not None
    config, problems = load_text(dump_config(doc), "imported.yaml")
    assert problems == [] and config is not None
    return config


def errors_of(kind: str, name: str, endpoints: str = "") -> list[str]:
    doc, errors = translate(kind, [manifest(name)], endpoints)
    assert errors, "expected the import to fail"
    return errors


def pick(
    table: RoutingTable,
    path: str = "/",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    rnd: float = 0.5,
) -> tuple[str | None, str | None]:
    """(route name, subset) the routing table picks for one request."""
    d = table.decide(method, path, headers or {}, "127.0.0.1", rnd)
    return (d.route.name if d.route else None), d.subset


def table_of(config: Config) -> RoutingTable:
    return build_table(config)


# --- tests of the shared converters -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("0.5s", 0.5),
        ("2h", 7200.0),
        (3, 3.0),
        ("1x", None),
        ("", None),
    ],
)
def test_go_durations(text: object, seconds: float | None) -> None:
    assert go_duration(text) == seconds


def test_endpoints_bind_subsets_and_repeat_to_add() -> None:
    eps = parse_endpoints("v1=127.0.0.1:9001, v2=127.0.0.1:9002,v1=127.0.0.1:9003")
    assert eps == {"v1": ["127.0.0.1:9001", "127.0.0.1:9003"], "v2": ["127.0.0.1:9002"]}
    with pytest.raises(ImportFailed, match="expected SUBSET=HOST:PORT"):
        parse_endpoints("v1=nohostport")
