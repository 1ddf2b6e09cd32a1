"""Istio VirtualService + DestinationRule import: translation, routing meaning, errors."""

from __future__ import annotations

import pytest
from test_import_common import errors_of, imported, manifest, pick, table_of

from proxy.cli import main
from proxy.config.schema import StringMatch
from proxy.importers import translate

EPS = "v1=127.0.0.1:9001,v2=127.0.0.1:9002"


def test_weight_split_keeps_weights_timeout_and_retries() -> None:
    config = imported("istio", "istio-weights.yaml", EPS)
    route = config.route("reviews-0")
    assert route is not None
    assert [(d.subset, d.weight) for d in route.destinations] == [("v1", 90), ("v2", 10)]
    assert route.timeout == 10.0 and route.service == "reviews"
    assert route.retries.attempts == 2 and route.retries.per_try_timeout == 2.0
    # refused-stream never fires on HTTP/1.1; gateway-error is 502/503/504 as in Envoy
    assert route.retries.retry_on == frozenset({"connect-failure", "502", "503", "504"})
    assert config.upstream("v2") is not None and config.upstream("v2").endpoints == (
        "127.0.0.1:9002",
    )


def test_weight_split_draws_follow_the_weights() -> None:
    table = table_of(imported("istio", "istio-weights.yaml", EPS))
    picks = [pick(table, rnd=i / 100)[1] for i in range(100)]
    assert picks.count("v1") == 90 and picks.count("v2") == 10


@pytest.mark.parametrize(
    ("headers", "route", "subset"),
    [
        ({"user-id": "test-user-001"}, "allow-list", "v2"),
        ({"user-id": "test-user-002"}, "allow-list", "v2"),
        ({"cookie": "theme=dark; beta_tester=true"}, "beta-cookie", "v2"),
        ({"cookie": "beta_tester=false"}, "default", "v1"),
        ({"x-region": "beijing"}, "region", "v2"),
        ({"x-region": "shanghai"}, "default", "v1"),
        ({"user-id": "user-1234"}, "even-users", "v2"),
        ({"user-id": "user-1237"}, "default", "v1"),
        ({}, "default", "v1"),
    ],
)
def test_ab_rules_keep_istio_first_match_order(
    headers: dict[str, str], route: str, subset: str
) -> None:
    table = table_of(imported("istio", "istio-ab.yaml", EPS))
    assert pick(table, headers=headers) == (route, subset)


def test_cookie_regex_becomes_a_cookie_match_and_pool_options_apply() -> None:
    config = imported("istio", "istio-ab.yaml", EPS)
    route = config.route("beta-cookie")
    assert route is not None
    assert route.match[0].cookies == (("beta_tester", StringMatch("exact", "true")),)
    assert config.upstream("v1").connect_timeout == 0.5


def test_full_route_translates_every_supported_field() -> None:
    config = imported("istio", "istio-full.yaml", EPS)
    route = config.route("api")
    assert route is not None
    rule = route.match[0]
    assert rule.path == StringMatch("prefix", "/api") and rule.method == frozenset({"GET", "HEAD"})
    assert dict(rule.headers)["x-legacy"] == StringMatch("absent")
    assert dict(rule.query)["debug"] == StringMatch("exact", "1")
    assert len(route.mirror) == 1
    assert (route.mirror[0].destination, route.mirror[0].percent) == ("v2", 12.5)
    assert (
        route.fault is not None and route.fault.delay is not None and route.fault.abort is not None
    )
    assert (route.fault.delay.fixed, route.fault.delay.percent) == (1.5, 10)
    assert (route.fault.abort.status, route.fault.abort.percent) == (503, 1)
    assert route.headers.request.set == (("x-env", "prod"),)
    assert route.headers.request.remove == ("x-debug",)
    assert route.destinations[0].headers.response.add == (("x-version", "v1"),)
    table = table_of(config)
    assert pick(table, "/api/x?debug=1", method="HEAD")[0] == "api"
    assert pick(table, "/api/x?debug=1", {"x-legacy": "1"})[0] == "ratings-1"
    assert pick(table, "/api/x?debug=1", method="POST")[0] == "ratings-1"


def test_every_unsupported_field_is_reported_with_its_path() -> None:
    errors = errors_of("istio", "istio-unsupported.yaml", EPS)
    text = "\n".join(errors)
    prefix = manifest("istio-unsupported.yaml") + ": VirtualService/payments: "
    assert prefix + "spec.http[0].fault.abort.grpcStatus: not supported" in errors
    assert prefix + "spec.http[0].rewrite: not supported" in errors
    assert "withoutHeaders.x-tier: only {} (header absent) is supported" in text
    assert "retryOn: 5xx: not supported" in text
    assert "v3: no DestinationRule for host payments defines it" in text
    assert "Gateway/public: kind: Gateway: not a kind `import istio` reads" in text


def test_missing_endpoints_name_the_subset() -> None:
    errors = errors_of("istio", "istio-weights.yaml", "v1=127.0.0.1:9001")
    assert any("v2: no endpoints; pass --endpoints v2=HOST:PORT" in e for e in errors)


def test_cli_writes_output_file_and_fails_whole(tmp_path, capsys) -> None:
    out = tmp_path / "config.yaml"
    assert (
        main(["import", "istio", manifest("istio-ab.yaml"), "--endpoints", EPS, "-o", str(out)])
        == 0
    )
    assert "name: even-users" in out.read_text()
    bad = tmp_path / "bad.yaml"
    code = main(
        ["import", "istio", manifest("istio-unsupported.yaml"), "--endpoints", EPS, "-o", str(bad)]
    )
    assert code == 1 and not bad.exists()
    assert "grpcStatus: not supported" in capsys.readouterr().err


def test_cli_stdout_and_unreadable_input(capsys) -> None:
    assert main(["import", "istio", manifest("istio-weights.yaml"), "--endpoints", EPS]) == 0
    assert "weight: 90" in capsys.readouterr().out
    assert main(["import", "istio", "/nonexistent.yaml"]) == 1
    assert "/nonexistent.yaml: cannot read" in capsys.readouterr().err
    assert main(["import", "istio", manifest("istio-weights.yaml"), "--endpoints", "v1"]) == 1
    assert "expected SUBSET=HOST:PORT" in capsys.readouterr().err


def test_two_virtual_services_with_the_same_route_name_stay_distinct(tmp_path) -> None:
    vs = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
    - name: default
      route: [{{destination: {{host: reviews, subset: v1}}}}]
---
"""
    dr = (
        "kind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews, subsets: [{name: v1}]}\n"
    )
    path = tmp_path / "two.yaml"
    path.write_text(vs.format(name="a") + vs.format(name="b") + dr)
    doc, errors = translate("istio", [str(path)], "v1=127.0.0.1:9001")
    assert errors == [] and doc is not None
    assert [r["name"] for r in doc["routes"]] == ["default", "b-default"]
