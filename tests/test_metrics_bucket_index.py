"""The latency bucket search of the hot path agrees with bisect over the fine buckets."""

from __future__ import annotations

import math
from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from proxy.metrics import bucket_index
from proxy.metrics_buckets import FINE_BUCKETS


def test_every_bound_and_its_neighbours() -> None:
    for b in FINE_BUCKETS:
        for x in (b, math.nextafter(b, 0), math.nextafter(b, math.inf)):
            assert bucket_index(x) == bisect_left(FINE_BUCKETS, x)
    for x in (0.0, -1.0, 1e9, math.inf):
        assert bucket_index(x) == bisect_left(FINE_BUCKETS, x)


@given(st.floats(min_value=0, max_value=120, allow_nan=False))
def test_any_duration(x: float) -> None:
    assert bucket_index(x) == bisect_left(FINE_BUCKETS, x)
