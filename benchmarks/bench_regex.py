"""Per-call cost of a full match: Python `re` vs google-re2, on route-shaped patterns.

    python benchmarks/bench_regex.py

Typical Istio patterns against short subjects (paths, header values), then a
ReDoS pattern `(a+)+$` against `"a" * n + "!"` for growing n, where `re`
backtracks exponentially. The figures are quoted in `proxy/routing/regex.py`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

try:
    import re2
except ImportError:  # the comparison needs it; the proxy does not
    re2 = None

TYPICAL = [
    (r".*[02468]", "test-user-0012"),
    (r"/api/v[0-9]+/users/[^/]+", "/api/v2/users/42"),
    (r"(?i)mozilla/.*(iphone|android).*", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"),
    (r"beijing|shanghai|shenzhen", "shenzhen"),
    (r"^[a-f0-9]{32}$", "0123456789abcdef0123456789abcdef"),
]
REDOS = r"(a+)+$"


def per_call_ns(fn: Callable[[str], object], subject: str, budget: float = 0.2) -> float:
    """Nanoseconds per call, timed in rounds until `budget` seconds have passed."""
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(1000):
            fn(subject)
        calls += 1000
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls * 1e9


def once_seconds(fn: Callable[[str], object], subject: str) -> float:
    start = time.perf_counter()
    fn(subject)
    return time.perf_counter() - start


def typical() -> None:
    print(f"{'pattern':45} {'re ns':>8} {'re2 ns':>8}")
    for pattern, subject in TYPICAL:
        py = per_call_ns(re.compile(pattern).fullmatch, subject)
        g = per_call_ns(re2.compile(pattern).fullmatch, subject) if re2 else float("nan")
        print(f"{pattern:45} {py:8.0f} {g:8.0f}")


def redos() -> None:
    print(f"\n{REDOS} against 'a'*n + '!'")
    print(f"{'n':>4} {'re s':>10} {'re2 s':>10}")
    for n in (16, 20, 22, 24):
        subject = "a" * n + "!"
        py = once_seconds(re.compile(REDOS).fullmatch, subject)
        g = once_seconds(re2.compile(REDOS).fullmatch, subject) if re2 else float("nan")
        print(f"{n:4} {py:10.4f} {g:10.6f}")
    long = "a" * 100_000 + "!"
    if re2:
        print(f"re2, n=100000: {once_seconds(re2.compile(REDOS).fullmatch, long):.4f} s")


if __name__ == "__main__":
    typical()
    redos()
