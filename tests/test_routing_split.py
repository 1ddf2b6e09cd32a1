"""Weighted splitting: exact counts, the monotonic hash ramp, weight 0, pinned mmh3 vectors."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.routing.split import (
    BUCKETS,
    bucket_of,
    bucket_ranges,
    build_weighted,
    idle_subset,
    mirror_hit,
    pick_hash,
    pick_random,
    probabilities,
    sticky_set_cookie,
)

# key -> bucket (salt "default") -> version at v1/v2 = 90/10 and at 50/50.
# These pin user placement across releases: if this table changes, users move.
GOLDEN = [
    ("user-1", 5124, "v1", "v2"),
    ("user-2", 2536, "v1", "v1"),
    ("user-42", 1435, "v1", "v1"),
    ("test-user-001", 1517, "v1", "v1"),
    ("alice", 698, "v1", "v1"),
    ("bob", 7528, "v1", "v2"),
    ("10.0.0.7", 4281, "v1", "v1"),
    ("用户1", 2771, "v1", "v1"),
    ("u28", 9630, "v2", "v2"),
    ("u38", 9920, "v2", "v2"),
    ("u1", 6129, "v1", "v2"),
    ("u2", 6093, "v1", "v2"),
]


@pytest.mark.parametrize(("key", "bucket", "at10", "at50"), GOLDEN)
def test_golden_mmh3_vectors(key: str, bucket: int, at10: str, at50: str) -> None:
    assert bucket_of("default", key) == bucket
    assert pick_hash(build_weighted(("v1", "v2"), (90, 10)), bucket) == at10
    assert pick_hash(build_weighted(("v1", "v2"), (50, 50)), bucket) == at50


def test_salt_separates_routes() -> None:
    assert bucket_of("default", "user-1") == 5124
    assert bucket_of("checkout", "user-1") == 2333


RANGE_CASES = [
    ((90.0, 10.0), ((0, 9000), (9000, 10000))),
    ((9.0, 1.0), ((0, 9000), (9000, 10000))),  # relative weights
    ((70.0, 30.0, 0.0), ((0, 7000), (7000, 10000), (10000, 10000))),
    ((50.0, 30.0, 20.0), ((0, 5000), (5000, 8000), (8000, 10000))),
    ((1.0, 2.0, 3.0), ((0, 1667), (1667, 5000), (5000, 10000))),
    ((1.0, 0.0, 1.0), ((0, 5000), (5000, 5000), (5000, 10000))),
    ((0.0, 1.0), ((0, 0), (0, 10000))),
    ((1.0, 0.0), ((0, 10000), (10000, 10000))),
    ((0.0, 0.0), ((0, 0), (0, 0))),
    ((5.0,), ((0, 10000),)),
]


@pytest.mark.parametrize(("weights", "want"), RANGE_CASES)
def test_bucket_ranges(weights: tuple[float, ...], want: tuple[tuple[int, int], ...]) -> None:
    assert bucket_ranges(weights) == want


def test_bucket_table_counts_are_exact() -> None:
    wt = build_weighted(("a", "b", "c"), (1, 2, 3))
    assert Counter(wt.lookup) == {"a": 1667, "b": 3333, "c": 5000}
    wt = build_weighted(("a", "b", "c"), (70, 30, 0))
    assert Counter(wt.lookup) == {"a": 7000, "b": 3000}


RANDOM_CASES = [
    ((95.0, 5.0), 0.0, "v1"),
    ((95.0, 5.0), 0.9499999, "v1"),
    ((95.0, 5.0), 0.95, "v2"),
    ((95.0, 5.0), 0.9999999999, "v2"),
    ((0.0, 5.0), 0.0, "v2"),
    ((5.0, 0.0), 0.9999999999, "v1"),
    ((1.0, 0.0, 1.0), 0.5, "v3"),
    ((1.0, 0.0, 1.0), 0.4999, "v1"),
]


@pytest.mark.parametrize(("weights", "rnd", "want"), RANDOM_CASES)
def test_pick_random(weights: tuple[float, ...], rnd: float, want: str) -> None:
    subsets = tuple(f"v{i + 1}" for i in range(len(weights)))
    assert pick_random(build_weighted(subsets, weights), rnd) == want


def test_pick_random_exact_counts_on_a_grid() -> None:
    wt = build_weighted(("a", "b", "c"), (1, 2, 1))
    got = Counter(pick_random(wt, i / 1000) for i in range(1000))
    assert got == {"a": 250, "b": 500, "c": 250}


def test_all_zero_weights_pick_nothing() -> None:
    wt = build_weighted(("a", "b"), (0, 0))
    assert pick_random(wt, 0.5) is None and pick_hash(wt, 17) is None
    assert probabilities(wt) == {"a": 0.0, "b": 0.0}


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "10", True])
def test_bad_weight_is_an_error(bad: object) -> None:
    with pytest.raises(ValueError, match="weight"):
        build_weighted(("a",), (bad,))  # type: ignore[arg-type]


def test_gateway_api_conformance_70_30_0() -> None:
    """As the Gateway API weight test: every share within 5 points over 500 draws."""
    wt = build_weighted(("v1", "v2", "v3"), (70, 30, 0))
    for seed in range(5):
        rng = random.Random(seed)
        got = Counter(pick_random(wt, rng.random()) for _ in range(500))
        assert abs(got["v1"] / 500 - 0.70) <= 0.05
        assert abs(got["v2"] / 500 - 0.30) <= 0.05
        assert got["v3"] == 0


def test_hash_split_shares_over_many_keys() -> None:
    wt = build_weighted(("v1", "v2"), (80, 20))
    got = Counter(pick_hash(wt, bucket_of("r", f"user-{i}")) for i in range(20_000))
    assert abs(got["v2"] / 20_000 - 0.20) < 0.02


def test_idle_subset_and_probabilities() -> None:
    wt = build_weighted(("blue", "green", "gray"), (100, 0, 0))
    assert idle_subset(wt) == "green"
    assert idle_subset(build_weighted(("a",), (1,))) is None
    assert probabilities(build_weighted(("a", "b"), (3, 1))) == {"a": 0.75, "b": 0.25}


def test_sticky_set_cookie_value() -> None:
    assert sticky_set_cookie("version", "v2", 60) == (
        "version=v2; Max-Age=60; Path=/; HttpOnly; SameSite=Lax"
    )


def test_mirror_draw_reads_the_low_digits() -> None:
    assert mirror_hit(0.0, 10) and not mirror_hit(0.0, 0)
    assert mirror_hit(0.5001, 100)
    draws = _draws(100_000)
    hits = sum(mirror_hit(r, 10) for r in draws)
    assert abs(hits / len(draws) - 0.10) < 0.005
    # independent of the split: among draws that pick v1 at 90/10, still ~10 % mirror
    v1 = [r for r in draws if r < 0.9]
    assert abs(sum(mirror_hit(r, 10) for r in v1) / len(v1) - 0.10) < 0.005


def _draws(n: int) -> list[float]:
    rng = random.Random(7)
    return [rng.random() for _ in range(n)]


weights_st = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
keys = st.text(min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(key=keys, stable=weights_st, w1=weights_st, w2=weights_st, canary_first=st.booleans())
def test_monotonic_ramp(key: str, stable: float, w1: float, w2: float, canary_first: bool) -> None:
    """Canary at weight w1 => canary at any w2 >= w1 (stable weight fixed), either order."""
    lo, hi = sorted((w1, w2))
    if canary_first:
        a = build_weighted(("v2", "v1"), (lo, stable))
        b = build_weighted(("v2", "v1"), (hi, stable))
    else:
        a = build_weighted(("v1", "v2"), (stable, lo))
        b = build_weighted(("v1", "v2"), (stable, hi))
    bucket = bucket_of("default", key)
    if pick_hash(a, bucket) == "v2":
        assert pick_hash(b, bucket) == "v2"


@settings(max_examples=200, deadline=None)
@given(key=keys, p1=st.integers(0, 100), p2=st.integers(0, 100))
def test_monotonic_ramp_with_complementary_weights(key: str, p1: int, p2: int) -> None:
    """The controller's shape: stable = 100 - w, canary = w."""
    lo, hi = sorted((p1, p2))
    a = build_weighted(("v1", "v2"), (100 - lo, lo))
    b = build_weighted(("v1", "v2"), (100 - hi, hi))
    bucket = bucket_of("default", key)
    if pick_hash(a, bucket) == "v2":
        assert pick_hash(b, bucket) == "v2"


small = st.integers(0, 6)


@settings(max_examples=400, deadline=None)
@given(
    key=keys,
    before=st.lists(small, min_size=3, max_size=5),
    after=st.lists(small, min_size=5, max_size=5),
)
def test_n_subsets_guarantee(key: str, before: list[int], after: list[int]) -> None:
    """A key of destination i stays while the share before i does not grow and the share
    through i does not shrink (the documented guarantee, checked in exact arithmetic)."""
    after = after[: len(before)]
    names = tuple(f"s{j}" for j in range(len(before)))
    wa, wb = build_weighted(names, tuple(before)), build_weighted(names, tuple(after))
    bucket = bucket_of("r", key)
    was = pick_hash(wa, bucket)
    if was is None or sum(after) == 0:
        return
    i = names.index(was)
    ta, tb = Fraction(sum(before)), Fraction(sum(after))
    prefix_ok = Fraction(sum(after[:i])) / tb <= Fraction(sum(before[:i])) / ta
    through_ok = Fraction(sum(after[: i + 1])) / tb >= Fraction(sum(before[: i + 1])) / ta
    if prefix_ok and through_ok:
        assert pick_hash(wb, bucket) == was


@settings(max_examples=300, deadline=None)
@given(
    key=keys,
    rest=st.lists(small, min_size=1, max_size=3),
    w1=st.integers(0, 100),
    w2=st.integers(0, 100),
)
def test_neighbours_shift_moves_only_their_keys(
    key: str, rest: list[int], w1: int, w2: int
) -> None:
    """[stable, canary, others...] with stable = 100 - w, canary = w: the others keep their
    keys, and stable keys only ever move to the canary as w grows."""
    lo, hi = sorted((w1, w2))
    names = ("stable", "canary", *(f"o{j}" for j in range(len(rest))))
    a = build_weighted(names, (100 - lo, lo, *rest))
    b = build_weighted(names, (100 - hi, hi, *rest))
    bucket = bucket_of("r", key)
    was, now = pick_hash(a, bucket), pick_hash(b, bucket)
    if was != now:
        assert (was, now) == ("stable", "canary")


@settings(max_examples=300, deadline=None)
@given(
    ws=st.lists(weights_st, min_size=1, max_size=5),
    rnd=st.floats(0, 1, exclude_max=True),
    bucket=st.integers(0, BUCKETS - 1),
)
def test_weight_zero_is_never_picked(ws: list[float], rnd: float, bucket: int) -> None:
    names = tuple(f"s{j}" for j in range(len(ws)))
    wt = build_weighted(names, tuple(ws))
    zero = {n for n, w in zip(names, ws, strict=True) if w == 0}
    for got in (pick_random(wt, rnd), pick_hash(wt, bucket)):
        assert got not in zero
        assert (got is None) == (sum(ws) == 0)
