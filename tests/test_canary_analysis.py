"""Analysis, judge and A/B statistics on known samples (reference values from scipy 1.17)."""

from __future__ import annotations

import pytest

from proxy.canary import analysis as a
from proxy.canary import goals as g
from proxy.canary import judge as j
from proxy.canary.machine import Verdict
from proxy.config.schema import Canary, Goal, MetricCheck

INF = float("inf")
# 100 requests: 90 under 10 ms, 9 in (10, 50] ms, 1 in (0.5, 1] s.
CUM = ((0.01, 90.0), (0.05, 99.0), (0.5, 99.0), (1.0, 100.0), (INF, 100.0))


def test_delta_subtracts_bucket_by_bucket() -> None:
    before = a.WindowStats(10, 1, ((0.01, 8.0), (INF, 10.0)), 0.5)
    now = a.WindowStats(30, 4, ((0.01, 20.0), (INF, 30.0)), 1.5)
    assert a.delta(now, before) == a.WindowStats(20, 3, ((0.01, 12.0), (INF, 20.0)), 1.0)


def test_delta_after_counter_reset_counts_from_zero() -> None:
    now = a.WindowStats(5, 0, ((INF, 5.0),), 0.1)
    assert a.delta(now, a.WindowStats(50, 1, ((INF, 50.0),), 3.0)) == now


@pytest.mark.parametrize(
    "q,expected",
    [(0.5, 0.01 * 50 / 90), (0.9, 0.01), (0.99, 0.05), (0.995, 0.5 + 0.5 * 0.5), (1.0, 1.0)],
)
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    assert a.quantile(q, CUM) == pytest.approx(expected)


def test_quantile_in_inf_bucket_answers_highest_finite_bound() -> None:
    assert a.quantile(0.99, ((0.1, 10.0), (INF, 100.0))) == 0.1
    assert a.quantile(0.99, ()) is None
    assert a.quantile(0.99, ((INF, 0.0),)) is None


def test_p99_is_not_the_mean() -> None:
    # 99 fast requests and one 0.9 s outlier: mean ~ 10 ms, the true P99 is 50 ms.
    w = a.WindowStats(100, 0, CUM, 0.9 + 99 * 0.001)
    assert a.p99_ms(w) == pytest.approx(50.0)


def test_builtin_values() -> None:
    w = a.WindowStats(200, 5, ((INF, 200.0),), 1.0)
    assert a.error_rate(w) == pytest.approx(2.5)
    assert a.success_rate(w) == pytest.approx(97.5)
    assert a.error_rate(a.WindowStats()) is None


@pytest.mark.parametrize(
    "check,value,verdict",
    [
        (MetricCheck("error-rate", max=1), 0.5, Verdict.PASS),
        (MetricCheck("error-rate", max=1), 1.5, Verdict.FAIL),
        (MetricCheck("request-success-rate", min=99), 98.0, Verdict.FAIL),
        (MetricCheck("request-success-rate", min=99), 99.0, Verdict.PASS),
        (MetricCheck("x", min=1, max=2), None, Verdict.INCONCLUSIVE),
    ],
)
def test_threshold_verdict(check: MetricCheck, value: float | None, verdict: Verdict) -> None:
    assert a.threshold_verdict(check, value, Verdict.INCONCLUSIVE).verdict == verdict


def _r(v: Verdict) -> a.CheckResult:
    return a.CheckResult("m", 1.0, None, 1.0, v, "bad" if v == Verdict.FAIL else "")


def test_assess_too_few_requests_is_inconclusive_or_fail() -> None:
    fail = [_r(Verdict.FAIL)]
    assert a.assess(fail, 5, 20, "hold")[0] == Verdict.INCONCLUSIVE
    assert a.assess([_r(Verdict.PASS)], 5, 20, "fail")[0] == Verdict.FAIL
    assert a.assess(fail, 20, 20, "hold")[0] == Verdict.FAIL
    assert a.assess([_r(Verdict.PASS)], 20, 20, "hold")[0] == Verdict.PASS
    assert a.assess([_r(Verdict.INCONCLUSIVE)], 20, 20, "hold")[0] == Verdict.INCONCLUSIVE


def test_two_proportion_matches_scipy() -> None:
    r = j.two_proportion(12, 200, 3, 300)
    assert r.statistic == pytest.approx(3.2108064953396775)
    assert r.p_value == pytest.approx(0.0006618151611658534)
    assert j.two_proportion(0, 0, 1, 10).p_value == 1.0
    assert j.two_proportion(0, 10, 0, 10).p_value == 1.0


def test_mann_whitney_binned_matches_scipy_with_ties() -> None:
    x, y = [2.0, 5, 10, 8, 5], [10.0, 12, 8, 3, 1]
    r = j.mann_whitney_binned(x, y)
    assert r.statistic == pytest.approx(769.5)
    assert r.p_value == pytest.approx(0.00017107680031219812)
    assert j.mann_whitney_binned(y, x).p_value == pytest.approx(0.9998377570963595)


def _hist(bins: list[float]) -> a.Buckets:
    bounds, out, c = [0.005, 0.01, 0.05, 0.1, INF], [], 0.0
    for le, n in zip(bounds, bins, strict=True):
        c += n
        out.append((le, c))
    return tuple(out)


def test_compare_fails_only_a_significantly_worse_canary() -> None:
    stable = a.WindowStats(1000, 10, _hist([500, 400, 90, 10, 0]))
    same = a.WindowStats(100, 1, _hist([50, 40, 9, 1, 0]))
    slow = a.WindowStats(100, 1, _hist([5, 10, 40, 45, 0]))
    erring = a.WindowStats(100, 12, _hist([50, 40, 9, 1, 0]))
    for metric in ("error-rate", "request-success-rate", "request-duration"):
        assert j.compare(metric, same, stable, 98).verdict == Verdict.PASS
    assert j.compare("request-duration", slow, stable, 98).verdict == Verdict.FAIL
    assert j.compare("error-rate", erring, stable, 98).verdict == Verdict.FAIL
    assert j.compare("error-rate", a.WindowStats(), stable, 98).verdict == Verdict.INCONCLUSIVE


def test_wilson_interval_matches_scipy() -> None:
    lo, hi = g.wilson(30, 100, 95)
    assert lo == pytest.approx(0.21894885294932764, abs=1e-6)
    assert hi == pytest.approx(0.39584854633346667, abs=1e-6)
    assert g.wilson(0, 0) == (0.0, 1.0)


def test_goal_tracker_counts_distinct_users_and_names_a_winner() -> None:
    c = Canary("ab", "shop", "v1", "v2", mode="ab", goals=(Goal("checkout", "/checkout", "POST"),))
    t = g.GoalTracker()
    t.configure([c])
    for i in range(400):
        version = "v1" if i % 2 else "v2"
        t.record("shop", version, "GET", "/", f"u{i}")
        t.record("shop", version, "GET", "/", f"u{i}")  # a repeat visit is one user
        buys = (i % 10 == 0) if version == "v1" else (i % 4 == 0)
        if buys or version == "v1" and i % 10 == 1:
            t.record("shop", version, "POST", "/checkout", f"u{i}")
    t.record("shop", "v1", "GET", "/checkout", "u1")  # wrong method: no conversion
    t.record("other", "v1", "POST", "/checkout", "x")  # another route: ignored
    (res,) = t.results(c, 95)
    v1, v2 = res["versions"]["v1"], res["versions"]["v2"]  # type: ignore[index]
    assert (v1["users"], v1["converted"]) == (200, 40)
    assert (v2["users"], v2["converted"]) == (200, 100)
    assert res["winner"] == "v2"
    t.reset("ab")
    assert t.results(c)[0]["winner"] is None


def test_goal_tracker_observe_finds_the_user_key_like_the_split() -> None:
    from proxy.config.schema import Config, Destination, Route, Split, Upstream

    c = Canary("ab", "shop", "v1", "v2", mode="ab", goals=(Goal("buy", "/buy"),))
    routes = (Route("shop", (Destination("v1"), Destination("v2")),
                    split=Split("cookie", "uid")),)  # fmt: skip
    config = Config("127.0.0.1:0", (Upstream("v1", ("a:1",)), Upstream("v2", ("b:1",))), routes,
                    canaries=(c,))  # fmt: skip
    t = g.GoalTracker()
    t.configure(config.canaries, config)
    t.observe("shop", "v2", "GET", "/", {"cookie": "a=1; uid=alice"}, "10.0.0.1")
    t.observe("shop", "v2", "POST", "/buy?x=1", {"cookie": "uid=alice"}, "10.0.0.2")
    t.observe("shop", "v2", "GET", "/", {}, "10.0.0.3")  # no key: not counted
    v2 = t.results(c)[0]["versions"]["v2"]  # type: ignore[index]
    assert (v2["users"], v2["converted"]) == (1, 1)
    assert g.key_source(config, "other") == ("header", "user-id")
    assert g.user_key(("source_ip", ""), {}, "1.2.3.4") == "1.2.3.4"
