"""Flagger Canary import: analysis, metrics, webhooks, session affinity, modes, errors."""

from __future__ import annotations

from test_import_common import errors_of, imported, pick, table_of

from proxy.config.schema import StringMatch

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
    assert config.upstream("podinfo-canary").endpoints == ("127.0.0.1:9002",)
    table = table_of(config)
    assert {pick(table, rnd=i / 10)[1] for i in range(10)} == {"podinfo-primary"}


def test_iterations_with_match_is_ab_mode() -> None:
    canary = imported("flagger", "flagger-ab.yaml", EPS).canaries[0]
    assert canary.mode == "ab" and canary.analysis.iterations == 10
    rules = canary.analysis.match
    assert dict(rules[0].headers)["x-canary"] == StringMatch("regex", ".*insider.*")
    assert dict(rules[1].cookies)["canary"] == StringMatch("exact", "always")


def test_full_subset_names_are_accepted_too() -> None:
    config = imported(
        "flagger", "flagger-ab.yaml", "abtest-primary=127.0.0.1:1,abtest-canary=127.0.0.1:2"
    )
    assert config.upstream("abtest-primary").endpoints == ("127.0.0.1:1",)


def test_unsupported_fields_and_kinds_are_reported() -> None:
    text = "\n".join(errors_of("flagger", "flagger-unsupported.yaml", EPS))
    assert "Canary/legacy: spec.skipAnalysis: not supported" in text
    assert "Canary/legacy: spec.analysis.stepWeightPromotion: not supported" in text
    assert "spec.analysis.metrics[0]: custom-latency: not supported" in text
    assert "spec.analysis.webhooks[0].type: on-failure: unknown webhook type" in text
    assert "MetricTemplate/latency: kind: MetricTemplate: not a kind `import flagger` reads" in text


def test_missing_endpoints_name_both_spellings() -> None:
    text = "\n".join(errors_of("flagger", "flagger-podinfo.yaml", "primary=127.0.0.1:1"))
    assert (
        "podinfo-canary: no endpoints; pass --endpoints podinfo-canary=HOST:PORT (or canary=HOST:PORT)"
        in text
    )
