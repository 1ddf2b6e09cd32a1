"""Counters from worker processes add up in the supervisor: no double counts, no resets."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from proxy.config.load import load_text
from proxy.config.pack import pack_config, unpack_config
from proxy.metrics import ProxyMetrics
from proxy.routing.table import Overrides
from proxy.workers.wire import Report, State, frame, read_frame


def _worker(requests: list[tuple[str, int, float]]) -> ProxyMetrics:
    m = ProxyMetrics(CollectorRegistry())
    for version, code, seconds in requests:
        m.observe("web", "web-svc", version, code, seconds)
    return m


def _value(m: ProxyMetrics, name: str, labels: dict[str, str]) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_cumulative_reports_are_added_once() -> None:
    sup = ProxyMetrics(CollectorRegistry())
    w = _worker([("v1", 200, 0.001), ("v2", 503, 0.2)])
    sup.merge(101, w.export_counts())
    sup.merge(101, w.export_counts())  # the same totals again: nothing new
    w.observe("web", "web-svc", "v1", 200, 0.004)
    sup.merge(101, w.export_counts())
    v1, v2 = sup.snapshot("web", "v1"), sup.snapshot("web", "v2")
    assert (v1.total, v1.errors, v2.total, v2.errors) == (2, 0, 1, 1)
    assert abs(v1.sum - 0.005) < 1e-9
    assert dict(v1.buckets)[0.001] == 1 and dict(v1.buckets)[0.005] == 2
    labels = {"route": "web", "version": "v2", "code": "503"}
    assert _value(sup, "canaryproxy_requests_total", labels) == 1


def test_workers_add_up_and_a_restarted_worker_does_not_reset_the_totals() -> None:
    sup = ProxyMetrics(CollectorRegistry())
    a = _worker([("v1", 200, 0.01)] * 3)
    b = _worker([("v1", 200, 0.01)] * 4)
    sup.merge(1, a.export_counts())
    sup.merge(2, b.export_counts())
    assert sup.snapshot("web", "v1").total == 7
    sup.retire(1)  # worker 1 died; its replacement (pid 3) counts from zero
    sup.merge(3, _worker([("v1", 200, 0.01)]).export_counts())
    assert sup.snapshot("web", "v1").total == 8
    assert (
        _value(sup, "canaryproxy_requests_total", {"route": "web", "version": "v1", "code": "200"})
        == 8
    )


def test_upstream_errors_and_mirrors_are_merged() -> None:
    sup = ProxyMetrics(CollectorRegistry())
    w = ProxyMetrics(CollectorRegistry())
    w.upstream_error("v2", "connect")
    w.upstream_error("v2", "connect")
    w.mirrored("web", "v3")
    sup.merge(7, w.export_counts())
    w.upstream_error("v2", "connect")
    sup.merge(7, w.export_counts())
    errors = {"version": "v2", "reason": "connect"}
    assert _value(sup, "canaryproxy_upstream_errors_total", errors) == 3
    assert (
        _value(sup, "canaryproxy_mirrored_requests_total", {"route": "web", "version": "v3"}) == 1
    )


def test_status_rates_see_merged_requests() -> None:
    sup = ProxyMetrics(CollectorRegistry())
    sup.tick(now=0.0)
    sup.merge(1, _worker([("v1", 200, 0.01)] * 10).export_counts())
    rates = sup.version_rates("web", "v1", now=2.0)
    assert rates["requests"] == 10 and rates["rps"] == 5.0


async def test_messages_cross_a_stream_whole() -> None:
    text = """\
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
upstreams:
  v1: {endpoints: ["127.0.0.1:1"]}
routes:
  - name: web
    route: [{destination: v1, weight: 100}]
"""
    config, errors = load_text(text, "c.yaml")
    assert not errors and config is not None
    state = State(
        1,
        pack_config(config),
        Overrides({"web": {"v1": 100.0}}),
        (("v1", "127.0.0.1:1", False),),
        "h",
        9,
    )
    report = Report(42, _worker([("v1", 200, 0.01)]).export_counts(), final=True)
    reader = asyncio.StreamReader()
    data = frame(state) + frame(report)
    for i in range(0, len(data), 7):  # arrives in pieces, as on a socket
        reader.feed_data(data[i : i + 7])
    reader.feed_eof()
    got_state = await read_frame(reader)
    assert got_state == state
    assert await unpack_config(got_state.config) == config
    got = await read_frame(reader)
    assert got.pid == 42 and got.final and got.counts.series[("web", "v1")].codes == {200: 1}
    assert await read_frame(reader) is None


def test_goal_relay_forwards_each_user_once_per_report_and_only_for_goal_routes() -> None:
    from proxy.workers.goals import GoalRelay

    text = """\
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
upstreams:
  v1: {endpoints: ["127.0.0.1:1"]}
  v2: {endpoints: ["127.0.0.1:2"]}
routes:
  - name: web
    route: [{destination: v1, weight: 100}, {destination: v2, weight: 0}]
  - name: api
    route: [{destination: v1, weight: 100}]
canaries:
  - name: shop
    route: web
    stable: v1
    canary: v2
    mode: ab
    goals: [{name: checkout, path: /checkout, method: POST}]
    analysis:
      interval: 1s
      match: [{headers: {x-beta: {exact: "1"}}}]
      metrics: [{name: error-rate, max: 1}]
"""
    config, errors = load_text(text, "c.yaml")
    assert not errors and config is not None
    relay = GoalRelay()
    relay.configure(config)
    assert relay.wants("web") and not relay.wants("api")
    for _ in range(3):
        relay.observe("web", "v2", "POST", "/checkout?x=1", {"user-id": "u1"}, "10.0.0.1")
    relay.observe("web", "v2", "GET", "/", {}, "10.0.0.1")  # no user key: nothing to count
    assert relay.take() == (("web", "v2", "POST", "/checkout", "u1"),)
    assert relay.take() == ()
