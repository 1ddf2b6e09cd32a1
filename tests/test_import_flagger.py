"""Flagger Canary import: analysis, metrics and MetricTemplates, webhooks, session affinity,
modes, endpoint defaults, A/B matches as each provider applies them, errors."""

from __future__ import annotations

import pathlib

import pytest
from test_import_common import errors_of, imported, manifest, notes_of, pick, table_of

from proxy.config.schema import StringMatch
from proxy.importers import translate
from proxy.routing.match import Request, compile_rules

EPS = "primary=127.0.0.1:9001,canary=127.0.0.1:9002"


def test_podinfo_canary_analysis_translates() -> None:
    config = imported("flagger", "flagger-podinfo.yaml", EPS)
    (canary,) = config.canaries
    assert (canary.name, canary.route, canary.mode) == ("podinfo", "podinfo", "canary")
    assert (canary.stable, canary.canary) == ("podinfo-primary", "podinfo-canary")
    a = canary.analysis
    assert (a.interval, a.threshold, a.max_weight, a.step_weight) == (60, 5, 50, 10)
    assert a.progress_deadline == 60
    assert [(m.name, m.min, m.max) for m in a.metrics] == [
        ("request-success-rate", 99, None),
        ("request-duration", None, 500),
    ]


def test_load_test_webhook_keeps_type_url_and_metadata() -> None:
    a = imported("flagger", "flagger-podinfo.yaml", EPS).canaries[0].analysis
    hooks = {w.name: w for w in a.webhooks}
    assert hooks["acceptance-test"].type == "pre-rollout"
    load = hooks["load-test"]
    assert load.type == "rollout" and load.url == "http://flagger-loadtester.test/"
    assert load.timeout == 5
    assert dict(load.metadata)["cmd"] == "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"


def test_route_starts_all_on_primary_with_session_affinity() -> None:
    config = imported("flagger", "flagger-podinfo.yaml", EPS)
    route = config.route("podinfo")
    assert route is not None
    assert [(d.subset, d.weight) for d in route.destinations] == [
        ("podinfo-primary", 100),
        ("podinfo-canary", 0),
    ]
    assert route.sticky is not None and (route.sticky.cookie, route.sticky.max_age) == (
        "flagger-cookie",
        21600,
    )
    assert route.timeout == 30 and route.retries.attempts == 3
    assert config.upstream("podinfo-canary").endpoints == ("127.0.0.1:9002",)  # type: ignore[union-attr]
    table = table_of(config)
    assert {pick(table, rnd=i / 10)[1] for i in range(10)} == {"podinfo-primary"}


def test_endpoints_default_to_flaggers_service_names_with_a_note() -> None:
    config = imported("flagger", "flagger-podinfo.yaml", "")
    eps = {u.name: u.endpoints for u in config.upstreams}
    assert eps == {
        "podinfo-primary": ("podinfo-primary.test:9898",),
        "podinfo-canary": ("podinfo-canary.test:9898",),
    }
    notes = "\n".join(notes_of("flagger", ["flagger-podinfo.yaml"]))
    assert (
        "spec.service.port: endpoints default to Flagger's Services podinfo-primary.test:9898"
        in notes
    )
    # one given, the other keeps its default
    config = imported("flagger", "flagger-podinfo.yaml", "primary=127.0.0.1:1")
    assert {u.name: u.endpoints for u in config.upstreams}["podinfo-canary"] == (
        "podinfo-canary.test:9898",
    )


def test_namespace_defaults_to_default() -> None:
    config = imported("flagger", "flagger-ab.yaml", "")
    assert config.upstream("abtest-primary").endpoints == ("abtest-primary.default:80",)  # type: ignore[union-attr]


def test_kubernetes_wiring_is_noted_as_ignored() -> None:
    notes = "\n".join(notes_of("flagger", ["flagger-podinfo.yaml"], EPS))
    for path in ("spec.autoscalerRef", "spec.service.targetPort", "spec.targetRef.kind"):
        assert f"Canary/podinfo: {path}: ignored: " in notes


def test_istio_ab_match_is_istio_semantics() -> None:
    canary = imported("flagger", "flagger-ab.yaml", EPS).canaries[0]
    assert canary.mode == "ab" and canary.analysis.iterations == 10
    rules = canary.analysis.match
    assert dict(rules[0].headers)["x-canary"] == StringMatch("regex", ".*insider.*")
    assert dict(rules[1].cookies)["canary"] == StringMatch("exact", "always")


def _reaches_canary(config, headers: dict[str, str]) -> bool:
    rules = compile_rules(config.canaries[0].analysis.match, config.identity)
    req = Request("GET", "/", {k.lower(): v for k, v in headers.items()}, "127.0.0.1")
    return any(rule.matches(req) for rule in rules)


@pytest.mark.parametrize(
    ("headers", "canary"),
    [
        ({"x-canary": "insider"}, True),
        ({"cookie": "canary=always"}, True),  # canary-by-cookie: canary, value always
        ({"cookie": "theme=dark; canary=always"}, True),
        ({"cookie": "canary=never"}, False),
        ({"cookie": "canary=yes"}, False),
        ({"cookie": "canary"}, False),  # not a literal Cookie header match
        ({"x-canary": "outsider"}, False),
        ({"x-canary": "outsider", "cookie": "canary=always"}, True),  # a value falls through
        ({}, False),
    ],
)
def test_nginx_ab_match_is_what_flagger_writes_for_ingress_nginx(
    headers: dict[str, str], canary: bool
) -> None:
    config = imported("flagger", "flagger-nginx.yaml", EPS)
    assert config.canaries[0].mode == "ab"
    assert _reaches_canary(config, headers) is canary


def test_nginx_route_takes_the_ingress_hosts() -> None:
    config = imported("flagger", "flagger-nginx.yaml", EPS)
    route = config.route("podinfo")
    assert route is not None and route.hosts == ("app.example.com",)


def _ab_config(items: list[dict]):
    from proxy.config.validate import validate

    config, errors = validate({
        "listen": "127.0.0.1:0",
        "upstreams": {"a": {"endpoints": ["127.0.0.1:1"]}, "b": {"endpoints": ["127.0.0.1:2"]}},
        "routes": [{"name": "r", "route": [{"destination": "a"}, {"destination": "b", "weight": 0}]}],
        "canaries": [{"name": "c", "route": "r", "stable": "a", "canary": "b", "mode": "ab",
                      "analysis": {"match": items}}],
    })  # fmt: skip
    assert not errors and config is not None
    return config


@pytest.mark.parametrize(
    ("headers", "canary"),
    [
        ({"x-canary": "always"}, True),
        ({"x-canary": "never", "cookie": "canary=always"}, False),  # never stops the cookie
        ({"x-canary": "maybe", "cookie": "canary=always"}, True),
        ({"cookie": "canary=always"}, True),
        ({"x-canary": "insider"}, False),
    ],
)
def test_nginx_header_without_value_means_always_or_never(headers, canary) -> None:
    from proxy.importers.nginx_canary import Rules

    config = _ab_config(Rules(header="x-canary", cookie="canary").canary_matches())
    assert _reaches_canary(config, headers) is canary


def test_nginx_header_match_without_value_is_refused(tmp_path) -> None:
    text = pathlib.Path(manifest("flagger-nginx.yaml")).read_text()
    path = tmp_path / "c.yaml"
    path.write_text(
        text.replace("          x-canary:\n            exact: insider", "          x-canary: {}")
    )
    errors = translate("flagger", [str(path)], EPS)[1]
    assert any(
        "spec.analysis.match[0].headers.x-canary: expected exactly one of" in e for e in errors
    )


@pytest.mark.parametrize(
    ("headers", "canary"),
    [
        ({"x-canary": "insider"}, True),
        ({"cookie": "a=b; canary=always"}, True),
        ({"cookie": "canary=never"}, False),
        ({"x-canary": "outsider"}, False),
    ],
)
def test_gatewayapi_ab_match_is_gateway_header_matching(headers, canary) -> None:
    config = imported("flagger", "flagger-gatewayapi-ab.yaml", EPS)
    assert _reaches_canary(config, headers) is canary
    route = config.route("podinfo")
    assert route is not None and route.hosts == ("www.example.com",)  # no apex under gatewayapi


def test_nginx_refuses_what_flaggers_nginx_router_would_drop(tmp_path) -> None:
    text = pathlib.Path(manifest("flagger-nginx.yaml")).read_text()
    text = text.replace("      - headers:\n          cookie:\n            exact: canary",
                        "      - headers:\n          cookie:\n            regex: 'canary=always'\n"
                        "      - uri:\n          prefix: /beta")  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(text)
    text = "\n".join(translate("flagger", [str(path)], EPS)[1])
    assert "headers.cookie: under nginx Flagger reads `cookie: {exact: NAME}`" in text
    assert "spec.analysis.match[2].uri: Flagger's nginx router reads only headers" in text


def test_metric_template_becomes_a_prometheus_check_with_its_query() -> None:
    config = imported("flagger", "flagger-nginx.yaml", EPS)
    a = config.canaries[0].analysis
    latency = next(m for m in a.metrics if m.name == "latency")
    assert 'kubernetes_namespace="test"' in latency.query
    assert 'kubernetes_pod_name=~"podinfo-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"' in latency.query
    assert 'ingress="podinfo"' in latency.query and 'direction="inbound"' in latency.query
    assert "[30s]" in latency.query and "{{" not in latency.query
    assert (latency.max, latency.interval) == (0.5, "30s")
    assert (a.provider.type, a.provider.address) == (
        "prometheus",
        "http://flagger-prometheus.ingress-nginx:9090",
    )


def test_unknown_template_variables_and_missing_templates_are_refused(tmp_path) -> None:
    text = pathlib.Path(manifest("flagger-nginx.yaml")).read_text()
    path = tmp_path / "c.yaml"
    path.write_text(text.replace("{{ variables.direction }}", "{{ variables.other }}"))
    assert any("{{ variables.other }}: unknown template variable" in e
               for e in translate("flagger", [str(path)], EPS)[1])  # fmt: skip
    path.write_text(
        text.replace(
            "name: latency\n        templateVariables", "name: nope\n        templateVariables"
        )
    )
    assert any("templateRef: nope: no such MetricTemplate among the files" in e
               for e in translate("flagger", [str(path)], EPS)[1])  # fmt: skip


def test_full_subset_names_are_accepted_too() -> None:
    config = imported(
        "flagger", "flagger-ab.yaml", "abtest-primary=127.0.0.1:1,abtest-canary=127.0.0.1:2"
    )
    assert config.upstream("abtest-primary").endpoints == ("127.0.0.1:1",)  # type: ignore[union-attr]


def test_unsupported_fields_are_reported() -> None:
    text = "\n".join(errors_of("flagger", "flagger-unsupported.yaml", EPS))
    assert "Canary/legacy: spec.skipAnalysis: not supported: promote by hand" in text
    assert "Canary/legacy: spec.analysis.stepWeightPromotion: not supported" in text
    assert "spec.analysis.metrics[0]: custom-latency: not supported: neither a builtin" in text
    assert "spec.analysis.webhooks[0].type: on-failure: unknown webhook type" in text
    assert "MetricTemplate/latency: spec.provider.secretRef: not supported" in text


def test_missing_endpoints_without_a_port_name_both_spellings(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(pathlib.Path(manifest("flagger-podinfo.yaml")).read_text()
                    .replace("    port: 9898\n", ""))  # fmt: skip
    errors = translate("flagger", [str(path)], "primary=127.0.0.1:1")[1]
    assert any(
        "podinfo-canary: no endpoints; pass --endpoints podinfo-canary=HOST:PORT (or canary=HOST:PORT)"
        in e
        for e in errors
    )
