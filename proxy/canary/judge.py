"""The comparison judge: is the canary significantly worse than stable in the same window?

- Error rates: one-sided two-proportion z-test (pooled), H1: canary rate > stable rate.
- Latency: one-sided Mann–Whitney U on the window's binned latency distributions (each
  histogram bucket is a tie group), with tie correction and continuity correction; equals
  `scipy.stats.mannwhitneyu(canary, stable, alternative="greater", method="asymptotic")`.
A check fails only when p < 1 - confidence/100 (default confidence 98 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from proxy.canary.analysis import Buckets, CheckResult, WindowStats, builtin_value
from proxy.canary.machine import Verdict


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def two_proportion(x1: float, n1: float, x2: float, n2: float) -> TestResult:
    """H1: x1/n1 > x2/n2. Pooled z-test; p = 1 when there is nothing to compare."""
    if n1 <= 0 or n2 <= 0:
        return TestResult(0.0, 1.0)
    pooled = (x1 + x2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return TestResult(0.0, 1.0)
    z = (x1 / n1 - x2 / n2) / math.sqrt(var)
    return TestResult(z, normal_sf(z))


def bin_counts(buckets: Buckets) -> list[float]:
    """Cumulative bucket counts -> per-bin counts (same order)."""
    out, below = [], 0.0
    for _, c in buckets:
        out.append(max(c - below, 0.0))
        below = c
    return out


def mann_whitney_binned(x: list[float], y: list[float]) -> TestResult:
    """H1: samples x tend to be larger than y. x[i], y[i]: counts in ordered bin i.

    Values in one bin are ties: each x beats every y in lower bins and half-ties its own bin.
    """
    n1, n2 = sum(x), sum(y)
    if n1 <= 0 or n2 <= 0:
        return TestResult(0.0, 1.0)
    u, y_below = 0.0, 0.0
    for xi, yi in zip(x, y, strict=True):
        u += xi * (y_below + 0.5 * yi)
        y_below += yi
    n = n1 + n2
    ties = sum((xi + yi) ** 3 - (xi + yi) for xi, yi in zip(x, y, strict=True))
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return TestResult(u, 1.0)
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
    return TestResult(u, normal_sf(z))


def compare(
    metric: str, canary: WindowStats, stable: WindowStats, confidence: float
) -> CheckResult:
    """One builtin metric, canary vs stable; value is the canary's own value."""
    alpha = 1.0 - confidence / 100.0
    value = builtin_value(metric, canary)
    if metric == "request-duration":
        res = mann_whitney_binned(bin_counts(canary.buckets), _aligned(stable, canary))
    else:
        res = two_proportion(canary.errors, canary.total, stable.errors, stable.total)
    if canary.total <= 0:
        return CheckResult(metric, None, None, None, Verdict.INCONCLUSIVE, "no canary data")
    worse = res.p_value < alpha
    detail = f"p={res.p_value:.3g} vs stable" + (" (significantly worse)" if worse else "")
    return CheckResult(metric, value, None, None, Verdict.FAIL if worse else Verdict.PASS, detail)


def _aligned(stable: WindowStats, canary: WindowStats) -> list[float]:
    """Stable's bins on the canary's bucket bounds (both come from one histogram layout)."""
    counts = dict(zip([le for le, _ in stable.buckets], bin_counts(stable.buckets), strict=True))
    return [counts.get(le, 0.0) for le, _ in canary.buckets]
