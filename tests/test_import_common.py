"""Importer test helpers (translate, route through the real table, serve through the real
proxy) and tests of the shared pieces: converters, endpoints, notes, best effort, vhosts."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from util_servers import ProxyHandle, Upstream, config_from_yaml, start_proxy, start_upstream

from proxy.cli import main
from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.importers import import_manifests, translate
from proxy.importers.common import (
    ImportFailed,
    Report,
    Source,
    dump_config,
    generic,
    go_duration,
    parse_endpoints,
)
from proxy.importers.nginx_canary import not_equal, unanchored
from proxy.importers.vhosts import isolate
from proxy.routing.regex import compile_full
from proxy.routing.table import RoutingTable, build_table

MANIFESTS = pathlib.Path(__file__).parent / "manifests"


def manifest(name: str) -> str:
    return str(MANIFESTS / name)


def imported(kind: str, name: str | list[str], endpoints: str) -> Config:
    """Translate manifest files and load the output exactly as `serve` would."""
    names = [name] if isinstance(name, str) else name
    doc, errors = translate(kind, [manifest(n) for n in names], endpoints)
    assert errors == [] and doc is not None, errors
    config, problems = load_text(dump_config(doc), "imported.yaml")
    assert problems == [] and config is not None
    return config


def errors_of(kind: str, name: str, endpoints: str = "") -> list[str]:
    doc, errors = translate(kind, [manifest(name)], endpoints)
    assert errors, "expected the import to fail"
    return errors


def notes_of(kind: str, names: list[str], endpoints: str = "") -> list[str]:
    return import_manifests(kind, [manifest(n) for n in names], endpoints).notes


def pick(
    table: RoutingTable,
    path: str = "/",
    headers: dict[str, str] | None = None,
    method: str = "GET",
    rnd: float = 0.5,
    host: str | None = None,
    listener: str = "default",
) -> tuple[str | None, str | None]:
    """(route name, subset) the routing table picks for one request."""
    hs = dict(headers or {})
    if host is not None:
        hs["host"] = host
    d = table.decide(method, path, hs, "127.0.0.1", rnd, listener)
    return (d.route.name if d.route else None), d.subset


def table_of(config: Config) -> RoutingTable:
    return build_table(config)


# --- serving: real upstreams, the real proxy ------------------------------------------------


async def named(name: str) -> Upstream:
    """An upstream answering with its own name, the path it got and the headers it got."""

    async def handler(request: web.Request) -> web.Response:
        headers: dict[str, str] = {}  # lower-case names; repeated headers joined by ", "
        for key, value in request.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]}, {value}" if k in headers else value
        return web.json_response(
            {"name": name, "path": request.raw_path, "headers": headers},
            headers={"x-upstream-secret": "s3cret", "x-served-by": name},
        )

    return await start_upstream(handler, name)


class Upstreams:
    """Named upstreams started on demand, all closed by the fixture."""

    def __init__(self) -> None:
        self.started: dict[str, Upstream] = {}

    async def get(self, name: str) -> Upstream:
        if name not in self.started:
            self.started[name] = await named(name)
        return self.started[name]

    async def endpoints(self, names: list[str]) -> str:
        """`--endpoints` binding each name to its own started upstream."""
        return ",".join([f"{n}={(await self.get(n)).address}" for n in names])


@contextlib.asynccontextmanager
async def upstreams() -> AsyncIterator[Upstreams]:
    """Upstreams for one test, all closed at its end (each test module's `ups` fixture)."""
    holder = Upstreams()
    try:
        yield holder
    finally:
        for up in holder.started.values():
            await up.close()


def local(doc: dict[str, Any]) -> str:
    """An imported config moved to 127.0.0.1 port 0, without access log, as YAML."""
    doc = dict(doc)
    if "listeners" in doc:
        doc["listeners"] = [{**ln, "listen": "127.0.0.1:0"} for ln in doc["listeners"]]
    else:
        doc["listen"] = "127.0.0.1:0"
    doc.update({"access_log": False, "admin": {"listen": "127.0.0.1:0"}})
    return dump_config(doc)


async def serve(ups: Upstreams, kind: str, files: list[str], names: list[str]) -> ProxyHandle:
    """Translate `files` (manifest names) with `names` bound to started upstreams; serve."""
    doc, errors = translate(kind, [manifest(f) for f in files], await ups.endpoints(names))
    assert errors == [] and doc is not None, errors
    return await start_proxy(config_from_yaml(local(doc)))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def name(self) -> str | None:
        return self.body.get("name") if isinstance(self.body, dict) else None


async def ask(
    proxy: ProxyHandle, path: str, host: str | None = None, port: int | None = None, **kw: Any
) -> Answer:
    """One GET through the proxy (redirects not followed), with `Host: host` when given."""
    headers = dict(kw.pop("headers", {}))
    if host is not None:
        headers["Host"] = host
    url = f"http://127.0.0.1:{port or proxy.port}{path}"
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        async with s.get(url, headers=headers, allow_redirects=False, **kw) as r:
            text = await r.text()
            try:
                body: Any = await r.json(content_type=None)
            except ValueError:
                body = text
            return Answer(r.status, dict(r.headers), body)


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


def test_table_keys_blank_indices() -> None:
    assert generic("spec.http[3].match[12].port") == "spec.http[].match[].port"


def test_a_part_with_a_refusal_is_marked() -> None:
    report, src = Report(), Source("f.yaml", {"kind": "VirtualService", "metadata": {"name": "a"}})
    mark = report.mark()
    report.note(src, "spec.x", "ignored: why")
    assert not report.since(mark)
    report.unsupported(src, "spec.y", {"spec.y": "because"})
    assert report.since(mark) and report.lines == [
        "f.yaml: VirtualService/a: spec.y: not supported: because"
    ]
    assert report.notes == ["f.yaml: VirtualService/a: spec.x: ignored: why"]


def test_a_host_that_a_wider_route_could_reach_gets_its_own_404() -> None:
    routes = [
        {"name": "a", "hosts": ["a.example.com"], "route": []},
        {"name": "w", "hosts": ["*.example.com"], "route": []},
        {"name": "any", "route": []},
    ]
    out = isolate(routes, {"a", "w", "any"})
    ends = [(r["hosts"], r["direct_response"]["status"]) for r in out[3:]]
    assert ends == [(["a.example.com"], 404), (["*.example.com"], 404)]
    assert isolate(routes[:1], {"a"}) == routes[:1]  # nothing less specific: nothing added


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("n", True), ("neve", True), ("never", False), ("nevers", True),
     ("always", True), ("xnever", True)],
)  # fmt: skip
def test_not_equal_is_every_string_but_the_word(value: str, ok: bool) -> None:
    assert compile_full(not_equal("never"))(value) is ok


def test_a_pcre_search_becomes_a_full_match() -> None:
    full = compile_full(unanchored("team-(a|b)"))
    assert full("my-team-a") and full("team-b!") and not full("team-c")


def test_cli_best_effort_imports_what_translates(tmp_path: pathlib.Path, capsys) -> None:
    out = tmp_path / "config.yaml"
    argv = ["import", "istio", manifest("istio-unsupported.yaml"), "--endpoints",
            "v1=127.0.0.1:1,v3=127.0.0.1:3", "-o", str(out)]  # fmt: skip
    assert main(argv) == 1 and not out.exists()
    assert main([*argv, "--best-effort"]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "grpcStatus: not supported" in err
    config, problems = load_text(out.read_text(), "out.yaml")
    assert problems == [] and config is not None
    # the refused match item is dropped with its route: nothing matches more than it did
    assert [r.name for r in config.routes] == ["payments-1"]


def test_cli_prints_ignored_fields_as_notes(capsys) -> None:
    assert (
        main(
            [
                "import",
                "istio",
                manifest("istio-weights.yaml"),
                "--endpoints",
                "v1=127.0.0.1:1,v2=127.0.0.1:2",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    line = f"{manifest('istio-weights.yaml')}: DestinationRule/reviews: spec.subsets[0].labels: ignored: "
    assert line in err


def test_unused_endpoints_are_noted() -> None:
    notes = notes_of(
        "istio", ["istio-weights.yaml"], "v1=127.0.0.1:1,v2=127.0.0.1:2,v9=127.0.0.1:9"
    )
    assert "--endpoints: v9: names no upstream (upstreams: reviews-v1, reviews-v2)" in notes
