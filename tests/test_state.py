"""Revisions, overrides and canary records in the state dir."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import pytest

from proxy.config.schema import (
    Config,
    Destination,
    MatchRule,
    Route,
    StringMatch,
    Upstream,
)
from proxy.state import (
    RoutingState,
    StateStore,
    file_weights,
    match_from_json,
    match_to_json,
    reconcile,
)


def _config(w1: float = 95, w2: float = 5, with_v2: bool = True) -> Config:
    ups = [Upstream("v1", ("127.0.0.1:1",))]
    dests = [Destination("v1", w1)]
    if with_v2:
        ups.append(Upstream("v2", ("127.0.0.1:2",)))
        dests.append(Destination("v2", w2))
    return Config("127.0.0.1:0", tuple(ups), (Route("default", tuple(dests)),))


RULE = MatchRule(
    path=StringMatch("prefix", "/api"),
    method=frozenset({"GET", "HEAD"}),
    headers=(("user-id", StringMatch("regex", ".*[02468]")),),
    cookies=(("beta", StringMatch("present")),),
    source_ip=("10.0.0.0/8",),
    region=frozenset({"beijing"}),
    users=frozenset({"u1"}),
)


@pytest.fixture
def stores(tmp_path) -> Iterator[Callable[..., StateStore]]:
    """Open stores on the state dir (or a sub dir); every one is closed at the end."""
    opened: list[StateStore] = []

    def open_store(sub: str = "") -> StateStore:
        opened.append(StateStore(str(tmp_path / sub) if sub else str(tmp_path)))
        return opened[-1]

    yield open_store
    for s in opened:
        s.close()


def test_revisions_are_numbered_and_survive_a_new_store(stores) -> None:
    store = stores()
    assert store.head() == 0
    store.record("reload", {"default": {"v1": 95, "v2": 5}})
    rev = store.record("weights", {"default": {"v1": 50, "v2": 50}}, {"default": ("v2", (RULE,))})
    assert rev["revision"] == 2
    store.flush().result(10)
    again = stores()
    assert [r["revision"] for r in again.history()] == [1, 2]
    got = again.get(2)
    assert got is not None and got["cause"] == "weights"
    assert got["weights"] == {"default": {"v1": 50, "v2": 50}}
    assert match_from_json(got["canary_match"]) == {"default": ("v2", (RULE,))}
    assert again.get(7) is None


def test_a_torn_last_revision_line_is_skipped(stores, tmp_path) -> None:
    store = stores()
    store.record("reload", {"default": {"v1": 1}})
    store.flush().result(10)
    with open(tmp_path / "revisions.jsonl", "a") as f:
        f.write('{"revision": 2, "ti')  # crash in the middle of an append
    assert [r["revision"] for r in stores().history()] == [1]


def test_revision_log_is_compacted_to_the_kept_revisions(stores, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("proxy.state.MAX_REVISIONS", 3)
    store = stores()
    for i in range(7):
        store.record("weights", {"default": {"v1": i}})
    store.flush().result(10)
    lines = (tmp_path / "revisions.jsonl").read_text().splitlines()
    assert [json.loads(x)["revision"] for x in lines] == [5, 6, 7]
    assert [r["revision"] for r in stores().history()] == [5, 6, 7]


def test_writes_leave_no_temp_files(stores, tmp_path) -> None:
    store = stores()
    store.record("reload", {})
    store.save_canary_state("default", {"phase": "Progressing", "step": 2})
    store.save_routing(RoutingState({"default": {"v1": 1}}, {}, {}))
    store.flush().result(10)
    assert sorted(os.listdir(tmp_path)) == [
        "canary-default.json",
        "revisions.jsonl",
        "routing.json",
    ]


def test_match_rules_round_trip_through_json() -> None:
    m = {"default": ("v2", (RULE, MatchRule()))}
    assert match_from_json(json.loads(json.dumps(match_to_json(m)))) == m


def test_canary_state_round_trip_and_unsafe_names(stores) -> None:
    store = stores()
    assert store.load_canary_state("default") is None
    state = {"phase": "Progressing", "step": 2}
    store.save_canary_state("default", state)
    state["step"] = 99  # the caller's later edits do not leak into what was saved
    assert store.load_canary_state("default") == {"phase": "Progressing", "step": 2}
    store.flush().result(10)
    assert stores().load_canary_state("default") == {"phase": "Progressing", "step": 2}
    with pytest.raises(ValueError):
        store.save_canary_state("../etc", {})


def test_routing_state_round_trip(stores) -> None:
    store = stores()
    st = RoutingState(
        {"default": {"v1": 0.0, "v2": 100.0}}, {"default": ("v2", (RULE,))}, file_weights(_config())
    )
    store.save_routing(st)
    store.flush().result(10)
    assert stores().load_routing() == st
    assert stores("fresh").load_routing() == RoutingState()


def test_override_survives_a_reload_that_keeps_the_file_weights() -> None:
    st = RoutingState({"default": {"v1": 0, "v2": 100}}, {}, file_weights(_config()))
    out = reconcile(st, _config())
    assert out.weights == {"default": {"v1": 0, "v2": 100}}


def test_file_changing_the_weights_wins_over_the_override() -> None:
    st = RoutingState({"default": {"v1": 0, "v2": 100}}, {}, file_weights(_config()))
    out = reconcile(st, _config(80, 20))
    assert out.weights == {}
    assert out.seen_file == {"default": {"v1": 80.0, "v2": 20.0}}


def test_override_of_a_removed_subset_is_dropped() -> None:
    st = RoutingState(
        {"default": {"v1": 0, "v2": 100}},
        {"default": ("v2", (RULE,))},
        {"default": {"v1": 95.0}},
    )
    out = reconcile(st, _config(95, with_v2=False))
    assert out.weights == {}
    assert out.canary_match == {}
