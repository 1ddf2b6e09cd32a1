"""Gateway API HTTPRoute import: precedence order, filters, weights, errors."""

from __future__ import annotations

from test_import_common import errors_of, imported, pick, table_of

from proxy.config.schema import StringMatch

EPS = "foo-v1=127.0.0.1:9001,foo-v2=127.0.0.1:9002"


def test_routes_are_ordered_by_gateway_precedence_not_file_order() -> None:
    config = imported("gateway", "gateway-split.yaml", EPS)
    # exact path > longest prefix with more headers > prefix > catch-all
    assert [r.name for r in config.routes] == [
        "foo-route-3",
        "foo-route-2",
        "foo-route-1",
        "foo-route-0",
    ]


def test_each_request_reaches_the_rule_gateway_api_would_pick() -> None:
    table = table_of(imported("gateway", "gateway-split.yaml", EPS))
    assert pick(table, "/api/health", {"traffic": "test"}) == ("foo-route-3", "foo-v1")
    assert pick(table, "/api/orders", {"traffic": "test"}) == ("foo-route-2", "foo-v2")
    assert pick(table, "/api", {}) == ("foo-route-1", "foo-v1")
    # PathPrefix matches whole path elements: /apix is not under /api
    assert pick(table, "/apix", {"traffic": "test"})[0] == "foo-route-0"


def test_weights_filters_mirror_and_timeout_translate() -> None:
    config = imported("gateway", "gateway-split.yaml", EPS)
    split = config.route("foo-route-0")
    assert split is not None
    assert [(d.subset, d.weight) for d in split.destinations] == [("foo-v1", 90), ("foo-v2", 10)]
    canary = config.route("foo-route-2")
    assert canary is not None and len(canary.mirror) == 1
    assert (canary.mirror[0].destination, canary.mirror[0].percent) == ("foo-v1", 50)
    assert canary.headers.request.add == (("x-canary", "true"),)
    assert dict(canary.match[0].headers)["traffic"] == StringMatch("exact", "test")
    api = config.route("foo-route-1")
    assert api is not None and api.headers.response.set == (("x-matched", "api-prefix"),)
    health = config.route("foo-route-3")
    assert health is not None and health.timeout == 5.0


def test_weight_draws_follow_relative_weights() -> None:
    table = table_of(imported("gateway", "gateway-split.yaml", EPS))
    picks = [pick(table, "/", rnd=i / 100)[1] for i in range(100)]
    assert picks.count("foo-v1") == 90 and picks.count("foo-v2") == 10


def test_unsupported_filters_and_backends_are_reported() -> None:
    text = "\n".join(errors_of("gateway", "gateway-unsupported.yaml"))
    assert (
        "HTTPRoute/bar-route: spec.rules[0].filters[0].type: RequestRedirect: not supported" in text
    )
    assert "spec.rules[0].filters[1].urlRewrite.path: not supported" in text
    assert "spec.rules[0].backendRefs[0].kind: ServiceImport: only Service backends" in text
    assert "bar: no endpoints; pass --endpoints bar=HOST:PORT" in text


def test_other_kinds_are_reported_not_skipped() -> None:
    text = "\n".join(errors_of("gateway", "istio-weights.yaml", EPS))
    assert "VirtualService/reviews: kind: VirtualService: not a kind `import gateway` reads" in text
