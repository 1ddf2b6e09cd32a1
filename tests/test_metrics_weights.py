"""Route weight gauges follow each routing change, touching only what differs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import ProxyMetrics

Weights = dict[str, dict[str, float]]


def _shown(reg: CollectorRegistry) -> Weights:
    out: Weights = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        if fam.name == "canaryproxy_route_weight":
            for s in fam.samples:
                out.setdefault(s.labels["route"], {})[s.labels["version"]] = s.value
    return out


def test_update_adds_changes_and_removes() -> None:
    reg = CollectorRegistry()
    m = ProxyMetrics(reg)
    first = {"a": {"v1": 90.0, "v2": 10.0}, "b": {"v1": 100.0}}
    m.update_route_weights({}, first)
    assert _shown(reg) == first
    second = {"a": {"v1": 50.0, "v3": 50.0}, "c": {"v2": 100.0}}
    m.update_route_weights(first, second)
    assert _shown(reg) == second


_weights = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.dictionaries(st.sampled_from(["v1", "v2", "v3"]), st.sampled_from([0.0, 10.0, 90.0])),
)


@given(st.lists(_weights, min_size=1, max_size=5))
def test_any_sequence_of_updates_shows_the_last(steps: list[Weights]) -> None:
    reg = CollectorRegistry()
    m = ProxyMetrics(reg)
    old: Weights = {}
    for new in steps:
        m.update_route_weights(old, new)
        old = new
    assert _shown(reg) == {r: s for r, s in steps[-1].items() if s}
