"""Istio VirtualService + DestinationRule import: translation, routing meaning, errors."""

from __future__ import annotations

import pytest
from test_import_common import errors_of, imported, manifest, notes_of, pick, table_of

from proxy.cli import main
from proxy.config.schema import Redirect, Rewrite, StringMatch
from proxy.importers import translate

EPS = "v1=127.0.0.1:9001,v2=127.0.0.1:9002"


def test_weight_split_keeps_weights_timeout_and_retries() -> None:
    config = imported("istio", "istio-weights.yaml", EPS)
    route = config.route("reviews-0")
    assert route is not None and route.hosts == ("reviews",)
    assert [(d.subset, d.weight) for d in route.destinations] == [
        ("reviews-v1", 90),
        ("reviews-v2", 10),
    ]
    assert route.timeout == 10.0 and route.service == "reviews"
    assert route.retries.attempts == 2 and route.retries.per_try_timeout == 2.0
    # refused-stream never fires on HTTP/1.1; gateway-error is 502/503/504 as in Envoy
    assert route.retries.retry_on == frozenset({"connect-failure", "502", "503", "504"})
    v2 = config.upstream("reviews-v2")
    assert v2 is not None and v2.endpoints == ("127.0.0.1:9002",)


def test_weight_split_draws_follow_the_weights() -> None:
    table = table_of(imported("istio", "istio-weights.yaml", EPS))
    picks = [pick(table, rnd=i / 100, host="reviews")[1] for i in range(100)]
    assert picks.count("reviews-v1") == 90 and picks.count("reviews-v2") == 10


def test_hosts_are_kept_as_written_and_said_so() -> None:
    table = table_of(imported("istio", "istio-weights.yaml", EPS))
    assert pick(table, host="reviews:9080")[1] == "reviews-v1"
    assert pick(table, host="reviews.default.svc.cluster.local") == (None, None)
    notes = "\n".join(notes_of("istio", ["istio-weights.yaml"], EPS))
    assert "spec.hosts[0]: reviews: kept as written" in notes


@pytest.mark.parametrize(
    ("headers", "route", "subset"),
    [
        ({"user-id": "test-user-001"}, "allow-list", "orders-v2"),
        ({"user-id": "test-user-002"}, "allow-list", "orders-v2"),
        ({"cookie": "theme=dark; beta_tester=true"}, "beta-cookie", "orders-v2"),
        ({"cookie": "beta_tester=false"}, "default", "orders-v1"),
        ({"x-region": "beijing"}, "region", "orders-v2"),
        ({"x-region": "shanghai"}, "default", "orders-v1"),
        ({"user-id": "user-1234"}, "even-users", "orders-v2"),
        ({"user-id": "user-1237"}, "default", "orders-v1"),
        ({}, "default", "orders-v1"),
    ],
)
def test_ab_rules_keep_istio_first_match_order(
    headers: dict[str, str], route: str, subset: str
) -> None:
    table = table_of(imported("istio", "istio-ab.yaml", EPS))
    assert pick(table, headers=headers, host="orders") == (route, subset)


def test_cookie_regex_becomes_a_cookie_match_and_pool_options_apply() -> None:
    config = imported("istio", "istio-ab.yaml", EPS)
    route = config.route("beta-cookie")
    assert route is not None
    assert route.match[0].cookies == (("beta_tester", StringMatch("exact", "true")),)
    v1 = config.upstream("orders-v1")
    assert v1 is not None and v1.connect_timeout == 0.5


def test_full_route_translates_every_supported_field() -> None:
    config = imported("istio", "istio-full.yaml", EPS)
    route = config.route("api")
    assert route is not None and route.hosts == ("ratings.prod.svc.cluster.local",)
    rule = route.match[0]
    assert rule.path == StringMatch("prefix", "/api") and rule.method == frozenset({"GET", "HEAD"})
    assert dict(rule.headers)["x-legacy"] == StringMatch("absent")
    assert dict(rule.query)["debug"] == StringMatch("exact", "1")
    assert [(m.destination, m.percent) for m in route.mirror] == [("ratings-v2", 12.5)]
    fault = route.fault
    assert fault is not None and fault.delay is not None and fault.abort is not None
    assert (fault.delay.fixed, fault.delay.percent) == (1.5, 10)
    assert (fault.abort.status, fault.abort.percent) == (503, 1)
    assert route.headers.request.set == (("x-env", "prod"),)
    assert route.headers.request.remove == ("x-debug",)
    assert route.destinations[0].headers.response.add == (("x-version", "v1"),)
    table = table_of(config)
    host = "ratings.prod.svc.cluster.local"
    assert pick(table, "/api/x?debug=1", method="HEAD", host=host)[0] == "api"
    assert pick(table, "/api/x?debug=1", {"x-legacy": "1"}, host=host)[0] == "ratings-1"
    assert pick(table, "/api/x?debug=1", method="POST", host=host)[0] == "ratings-1"


def test_four_services_v1_subsets_stay_four_upstreams() -> None:
    eps = ",".join(f"{s}-v1=127.0.0.1:{9000 + i}" for i, s in
                   enumerate(["productpage", "reviews", "ratings", "details"]))  # fmt: skip
    config = imported("istio", "istio-bookinfo-v1.yaml", eps)
    assert [u.name for u in config.upstreams] == [
        "productpage-v1", "reviews-v1", "ratings-v1", "details-v1",
    ]  # fmt: skip
    table = table_of(config)
    for i, svc in enumerate(["productpage", "reviews", "ratings", "details"]):
        assert pick(table, host=svc) == (f"{svc}-0", f"{svc}-v1")
        assert config.upstream(f"{svc}-v1").endpoints == (f"127.0.0.1:{9000 + i}",)  # type: ignore[union-attr]
    assert pick(table, host="unknown") == (None, None)


def test_a_bare_subset_name_is_ambiguous_across_services() -> None:
    text = "\n".join(errors_of("istio", "istio-bookinfo-v1.yaml", EPS))
    assert "reviews-v1: no endpoints; pass --endpoints reviews-v1=HOST:PORT" in text
    assert "(a bare `v1` is ambiguous: 4 services)" in text


def test_subsets_named_in_endpoints_need_no_destination_rule(tmp_path) -> None:
    vs = tmp_path / "vs.yaml"
    vs.write_text(manifest_text("istio-weights.yaml").split("---")[0])
    doc, errors = translate("istio", [str(vs)], EPS)
    assert errors == [] and doc is not None
    doc, errors = translate("istio", [str(vs)], "v1=127.0.0.1:1")
    assert any("no DestinationRule for host reviews defines subset v2" in e for e in errors)


def manifest_text(name: str) -> str:
    with open(manifest(name), encoding="utf-8") as fh:
        return fh.read()


def test_redirect_rewrite_direct_response_and_mirrors_translate() -> None:
    eps = "v1=127.0.0.1:1,v2=127.0.0.1:2,shadow=127.0.0.1:3"
    config = imported("istio", "istio-actions.yaml", eps)
    by = {r.name: r for r in config.routes}
    assert by["old-catalog"].redirect == Redirect(host="www.example.com", path="/shop", status=301)
    assert by["to-https"].redirect == Redirect(scheme="https", port=443, status=308)
    # one route per match item: Envoy's prefix_rewrite replaces the prefix each one matched
    assert by["api-v2"].rewrite == Rewrite(
        regex="^/api/v1", substitution="/api/v2", host="api.internal"
    )
    assert by["api-v2-1"].rewrite == Rewrite(
        regex="^/legacy", substitution="/api/v2", host="api.internal"
    )
    assert by["versions"].rewrite == Rewrite(regex="^/v([0-9]+)/(.*)$", substitution="/r/\\2/v\\1")
    teapot = by["teapot"].direct_response
    assert teapot is not None and (teapot.status, teapot.body) == (418, "short and stout\n")
    assert [(m.destination, m.percent) for m in by["default"].mirror] == [
        ("shop-v2", 100), ("shop-shadow", 100),
    ]  # fmt: skip
    table = table_of(config)
    host = "shop.example.com"
    assert pick(table, "/catalog/shoes", host=host)[0] == "old-catalog"
    assert pick(table, "/legacy/x", host=host) == ("api-v2-1", "shop-v2")
    assert pick(table, "/v2/items", host=host) == ("versions", "shop-v1")


def test_every_unsupported_field_is_reported_with_its_path() -> None:
    errors = errors_of("istio", "istio-unsupported.yaml", "v1=127.0.0.1:1")
    text = "\n".join(errors)
    prefix = manifest("istio-unsupported.yaml") + ": VirtualService/payments: "
    assert (
        prefix + "spec.http[1].fault.abort.grpcStatus: not supported: gRPC aborts (HTTP/1.1 only)"
        in errors
    )
    assert prefix + "spec.http[1].corsPolicy: not supported: CORS answers" in errors
    assert prefix + "spec.tcp: not supported: TCP routes (canaryproxy is an HTTP proxy)" in errors
    assert "withoutHeaders.x-tier: only {} (header absent) is supported" in text
    assert "retryOn: 5xx: not supported" in text
    assert "spec.trafficPolicy.loadBalancer: not supported" in text
    assert "no DestinationRule for host payments defines subset v3" in text
    assert "Gateway/public: kind: Gateway: not a kind `import istio` reads" in text


def test_missing_endpoints_name_the_upstream() -> None:
    errors = errors_of("istio", "istio-weights.yaml", "v1=127.0.0.1:9001")
    assert any(
        "reviews-v2: no endpoints; pass --endpoints reviews-v2=HOST:PORT" in e for e in errors
    )


def test_cli_writes_output_file_and_fails_whole(tmp_path, capsys) -> None:
    out = tmp_path / "config.yaml"
    argv = ["import", "istio", manifest("istio-ab.yaml"), "--endpoints", EPS, "-o", str(out)]
    assert main(argv) == 0
    assert "name: even-users" in out.read_text()
    bad = tmp_path / "bad.yaml"
    code = main(["import", "istio", manifest("istio-unsupported.yaml"), "--endpoints",
                 "v1=127.0.0.1:1,v3=127.0.0.1:3", "-o", str(bad)])  # fmt: skip
    assert code == 1 and not bad.exists()
    assert "grpcStatus: not supported" in capsys.readouterr().err


def test_cli_stdout_and_unreadable_input(capsys) -> None:
    assert main(["import", "istio", manifest("istio-weights.yaml"), "--endpoints", EPS]) == 0
    assert "weight: 90" in capsys.readouterr().out
    assert main(["import", "istio", "/nonexistent.yaml"]) == 1
    assert "/nonexistent.yaml: cannot read" in capsys.readouterr().err
    assert main(["import", "istio", manifest("istio-weights.yaml"), "--endpoints", "v1"]) == 1
    assert "expected SUBSET=HOST:PORT" in capsys.readouterr().err


def test_a_weight_that_is_not_a_number_is_refused_not_a_crash(tmp_path) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text(manifest_text("istio-weights.yaml").replace("weight: 90", "weight: $W"))
    doc, errors = translate("istio", [str(path)], EPS)
    assert doc is None and any("route[0].weight: '$W': not a number" in e for e in errors)


def test_two_virtual_services_only_match_their_own_host(tmp_path) -> None:
    vs = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
    - name: default
      route: [{{destination: {{host: {name}, subset: v1}}}}]
---
"""
    path = tmp_path / "two.yaml"
    path.write_text(vs.format(name="a") + vs.format(name="b"))
    doc, errors = translate("istio", [str(path)], "a-v1=127.0.0.1:1,b-v1=127.0.0.1:2")
    assert errors == [] and doc is not None
    assert [(r["name"], r["hosts"]) for r in doc["routes"]] == [
        ("default", ["a"]),
        ("b-default", ["b"]),
    ]
    from proxy.config.load import load_text
    from proxy.importers.common import dump_config

    config, _ = load_text(dump_config(doc), "x.yaml")
    assert config is not None
    table = table_of(config)
    assert pick(table, host="a") == ("default", "a-v1")
    assert pick(table, host="b") == ("b-default", "b-v1")


def test_a_catch_all_virtual_service_never_takes_a_named_hosts_leftovers(tmp_path) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text("""kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http: [{match: [{uri: {prefix: /api}}], route: [{destination: {host: shop, subset: v1}}]}]
---
kind: VirtualService
metadata: {name: everything}
spec:
  hosts: ["*"]
  http: [{route: [{destination: {host: legacy, subset: v1}}]}]
""")
    doc, errors = translate("istio", [str(path)], "shop-v1=127.0.0.1:1,legacy-v1=127.0.0.1:2")
    assert errors == [] and doc is not None
    from proxy.config.load import load_text
    from proxy.importers.common import dump_config

    config, _ = load_text(dump_config(doc), "x.yaml")
    assert config is not None
    table = table_of(config)
    assert pick(table, "/api/x", host="shop")[1] == "shop-v1"
    assert pick(table, "/other", host="shop")[0] == "shop-not-found"  # Envoy: 404 in vhost shop
    assert pick(table, "/other", host="elsewhere")[1] == "legacy-v1"
