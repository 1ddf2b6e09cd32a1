"""Gateway API HTTPRoute (+ Gateway) import through the real routing table: precedence,
hostnames and their intersection with listeners, filters, 500 for no backends, refusals."""

from __future__ import annotations

import pytest
from test_import_common import errors_of, imported, notes_of, pick, table_of

from proxy.config.schema import Redirect, Rewrite, StringMatch
from proxy.importers.gateway_listeners import intersect

EPS = "foo-v1=127.0.0.1:9001,foo-v2=127.0.0.1:9002"
BACKENDS = "backend-v1=127.0.0.1:1,backend-v2=127.0.0.1:2,backend-v3=127.0.0.1:3"
HOST = "foo.example.com"


def test_routes_are_ordered_by_gateway_precedence_not_file_order() -> None:
    config = imported("gateway", "gateway-split.yaml", EPS)
    # exact path > longest prefix with more headers > prefix > catch-all
    assert [r.name for r in config.routes] == [
        "foo-route-3",
        "foo-route-2",
        "foo-route-1",
        "foo-route-0",
    ]
    assert all(r.hosts == (HOST,) for r in config.routes)


def test_each_request_reaches_the_rule_gateway_api_would_pick() -> None:
    table = table_of(imported("gateway", "gateway-split.yaml", EPS))
    assert pick(table, "/api/health", {"traffic": "test"}, host=HOST) == ("foo-route-3", "foo-v1")
    assert pick(table, "/api/orders", {"traffic": "test"}, host=HOST) == ("foo-route-2", "foo-v2")
    assert pick(table, "/api", {}, host=HOST) == ("foo-route-1", "foo-v1")
    # PathPrefix matches whole path elements: /apix is not under /api
    assert pick(table, "/apix", {"traffic": "test"}, host=HOST)[0] == "foo-route-0"
    assert pick(table, "/api", host="bar.example.com") == (None, None)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/match/exact/one", "order-3"),
        ("/match/exact", "order-4"),
        ("/match", "order-5"),
        ("/match/prefix/one/any", "order-0"),
        ("/match/prefix/any", "order-1"),
        ("/match/any", "order-2"),
        ("/matchbox", None),  # /match/ is a prefix of path elements only
    ],
)
def test_path_match_order(path: str, route: str | None) -> None:
    table = table_of(imported("gateway", "gateway-across-routes.yaml", BACKENDS))
    assert pick(table, path, host="order.example.com")[0] == route


def test_prefix_is_element_wise_in_both_spellings() -> None:
    config = imported("gateway", "gateway-across-routes.yaml", BACKENDS)
    order2 = config.route("order-2")
    assert order2 is not None
    assert [m.path for m in order2.match] == [
        StringMatch("exact", "/match"),
        StringMatch("prefix", "/match/"),
    ]


@pytest.mark.parametrize(
    ("route_host", "listener", "expected"),
    [
        ("very.specific.com", "very.specific.com", "very.specific.com"),
        ("non.matching.com", "very.specific.com", None),
        ("foo.wildcard.io", "*.wildcard.io", "foo.wildcard.io"),
        ("foo.bar.wildcard.io", "*.wildcard.io", "foo.bar.wildcard.io"),
        ("wildcard.io", "*.wildcard.io", None),
        ("*.specific.com", "very.specific.com", "very.specific.com"),
        ("*.anotherwildcard.io", "*.anotherwildcard.io", "*.anotherwildcard.io"),
        ("*.a.wildcard.io", "*.wildcard.io", "*.a.wildcard.io"),
        ("*.io", "*.wildcard.io", "*.wildcard.io"),
        ("anything.com", None, "anything.com"),
    ],
)
def test_hostname_intersection(route_host: str, listener: str | None, expected: str | None) -> None:
    assert intersect(route_host, listener) == expected


def test_routes_take_the_hosts_they_share_with_the_listeners() -> None:
    config = imported("gateway", "gateway-hostnames.yaml", BACKENDS)
    hosts = {r.service: r.hosts for r in config.routes}
    assert hosts == {
        "specific-on-specific": ("very.specific.com",),
        "specific-on-wildcard": ("foo.wildcard.io", "bar.wildcard.io", "foo.bar.wildcard.io"),
        "wildcard-on-specific": ("very.specific.com",),
        "wildcard-on-wildcard": ("*.anotherwildcard.io",),
    }
    assert [(ln.name, ln.listen) for ln in config.listeners] == [("http-80", "0.0.0.0:80")]
    notes = "\n".join(notes_of("gateway", ["gateway-hostnames.yaml"], BACKENDS))
    assert "HTTPRoute/no-intersection: spec.hostnames: intersect no listener" in notes


@pytest.mark.parametrize(
    ("host", "path", "subset"),
    [
        ("very.specific.com", "/s1", "backend-v1"),
        ("very.specific.com:1234", "/s1", "backend-v1"),
        ("non.matching.com", "/s1", None),
        ("foo.wildcard.io", "/s1", None),
        ("foo.bar.wildcard.io", "/s2", "backend-v2"),
        ("wildcard.io", "/s2", None),
        ("very.specific.com", "/s3", "backend-v3"),
        ("foo.specific.com", "/s3", None),
        ("foo.bar.anotherwildcard.io", "/s4", "backend-v1"),
        ("anotherwildcard.io", "/s4", None),
        ("wildcard.io", "/s5", None),
    ],
)
def test_hostname_intersection_routes_requests(host: str, path: str, subset: str | None) -> None:
    table = table_of(imported("gateway", "gateway-hostnames.yaml", BACKENDS))
    assert pick(table, path, host=host, listener="http-80")[1] == subset


@pytest.mark.parametrize(
    ("host", "path", "headers", "subset"),
    [
        ("example.com", "/", {}, "backend-v1"),
        ("example.com", "/example", {}, "backend-v1"),
        ("example.net", "/example", {}, "backend-v1"),
        ("example.com", "/example", {"version": "one"}, "backend-v1"),
        ("example.com", "/v2", {}, "backend-v2"),
        ("example.net", "/v2", {}, "backend-v1"),
        ("example.com", "/v2/example", {}, "backend-v2"),
        ("example.com", "/", {"version": "two"}, "backend-v2"),
    ],
)
def test_matching_across_routes(host: str, path: str, headers: dict, subset: str) -> None:
    table = table_of(imported("gateway", "gateway-across-routes.yaml", BACKENDS))
    assert pick(table, path, headers, host=host)[1] == subset


def test_method_and_query_matches_outrank_plain_prefixes() -> None:
    table = table_of(imported("gateway", "gateway-across-routes.yaml", BACKENDS))
    host = "order.example.com"
    assert pick(table, "/method", method="POST", host=host)[1] == "backend-v2"
    assert pick(table, "/method", method="GET", host=host)[1] == "backend-v1"
    assert pick(table, "/query?animal=whale", host=host)[1] == "backend-v3"
    assert pick(table, "/query?animal=dolphin", host=host)[1] == "backend-v1"


def test_redirects_translate_every_field() -> None:
    config = imported("gateway", "gateway-redirects.yaml", "backend-v1=127.0.0.1:1")
    by = {r.match[0].path.value if r.match and r.match[0].path else "/": r for r in config.routes}
    assert by["/scheme-nil-and-port-nil"].redirect == Redirect(host="example.org")
    assert by["/scheme-https-and-port-8443"].redirect == Redirect("https", "example.org", 8443)
    assert by["/original-prefix"].redirect == Redirect(prefix="/replacement-prefix")
    assert by["/path-and-status"].redirect == Redirect(prefix="/replacement-prefix", status=301)
    assert by["/full"].redirect == Redirect(path="/full-path-replacement")
    assert [by[p].redirect.status for p in ("/see-other", "/temporary", "/permanent")] == [
        303,
        307,
        308,
    ]  # type: ignore[union-attr]


def test_url_rewrite_composes_with_header_modifiers_in_either_order() -> None:
    config = imported("gateway", "gateway-rewrites.yaml", BACKENDS)
    by = {r.match[0].path.value: r for r in config.routes if r.match and r.match[0].path}
    host = by["/rewrite-host"]
    assert host.rewrite == Rewrite(host="one.example.org")
    assert host.headers.request.add == (("x-header-add", "host-kept"),)
    both = by["/host-and-prefix"]
    assert both.rewrite == Rewrite(prefix="/moved", host="two.example.org")
    assert both.headers.request.set == (("x-header-set", "first"),)
    assert by["/strip-prefix"].rewrite == Rewrite(prefix="/")
    assert by["/full/one"].rewrite == Rewrite(path="/one")


def test_several_mirrors_stay_several_and_fractions_are_percents() -> None:
    config = imported("gateway", "gateway-filters.yaml", BACKENDS)
    by = {r.match[0].path.value: r for r in config.routes if r.match and r.match[0].path}
    assert [(m.destination, m.percent) for m in by["/mirror"].mirror] == [
        ("backend-v2", 100), ("backend-v3", 100),
    ]  # fmt: skip
    assert [(m.destination, m.percent) for m in by["/half"].mirror] == [("backend-v2", 50)]


def test_rules_without_valid_backends_answer_500() -> None:
    config = imported("gateway", "gateway-filters.yaml", BACKENDS)
    by = {r.match[0].path.value: r for r in config.routes if r.match and r.match[0].path}
    for path in ("/no-backends", "/invalid-kind"):
        answer = by[path].direct_response
        assert answer is not None and answer.status == 500 and by[path].destinations == ()
    notes = "\n".join(notes_of("gateway", ["gateway-filters.yaml"], BACKENDS))
    assert "spec.rules[3].backendRefs: it has no backendRefs: answered with 500" in notes
    assert "UnknownKind: not a Service: an invalid backendRef" in notes


def test_backend_header_filters_and_weights() -> None:
    config = imported("gateway", "gateway-filters.yaml", BACKENDS)
    route = next(r for r in config.routes if r.name == "filters-5")
    assert [(d.subset, d.weight) for d in route.destinations] == [
        ("backend-v1", 70),
        ("backend-v2", 30),
    ]
    assert route.destinations[1].headers.request.add == (("x-backend", "v2"),)
    table = table_of(config)
    picks = [
        pick(table, "/weights", rnd=i / 100, host="filters.example.com")[1] for i in range(100)
    ]
    assert picks.count("backend-v1") == 70


def test_unsupported_filters_backends_and_listeners_are_reported() -> None:
    text = "\n".join(errors_of("gateway", "gateway-unsupported.yaml", "bar=127.0.0.1:1"))
    route = "HTTPRoute/bar-route: spec.rules"
    assert f"{route}[0].filters[0].type.CORS: not supported: CORS answers" in text
    assert f"{route}[1].filters[0].type.ExtensionRef: not supported" in text
    assert f"{route}[2].sessionPersistence: not supported" in text
    assert f"{route}[3].backendRefs: 1 invalid of 2" in text
    assert f"{route}[4].backendRefs[0].filters[0].type.RequestMirror: not supported" in text
    assert "Gateway/edge: spec.listeners[1].protocol: not supported: only HTTP listeners" in text


def test_other_kinds_are_reported_not_skipped() -> None:
    text = "\n".join(errors_of("gateway", "istio-weights.yaml", EPS))
    assert "VirtualService/reviews: kind: VirtualService: not a kind `import gateway` reads" in text
