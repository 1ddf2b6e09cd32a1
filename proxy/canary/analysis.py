"""Pure analysis: window deltas of per-version counters -> check values -> a verdict.

Guarantees:
- P99 is the true quantile of the window's histogram (bucket deltas, linear interpolation
  inside the bucket, as PromQL `histogram_quantile`), never a mean.
- A window with fewer than `min_requests` canary requests is inconclusive (`on_no_data: hold`)
  or failed (`on_no_data: fail`); so is a check with no value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.canary.machine import Verdict
from proxy.config.schema import MetricCheck

Buckets = tuple[tuple[float, float], ...]  # (upper bound seconds, cumulative count), +Inf last


@dataclass(frozen=True)
class WindowStats:
    """Counters of one version: cumulative totals, or the deltas of one window."""

    total: float = 0.0
    errors: float = 0.0  # 5xx, including proxy-made 502/503/504
    buckets: Buckets = ()
    sum: float = 0.0


@dataclass(frozen=True)
class CheckResult:
    metric: str
    value: float | None
    min: float | None
    max: float | None
    verdict: Verdict
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "value": None if self.value is None else round(self.value, 4),
            "min": self.min,
            "max": self.max,
            "verdict": self.verdict.value,
            "detail": self.detail,
        }


def delta(now: WindowStats, before: WindowStats | None) -> WindowStats:
    """Counts of the window between two cumulative snapshots; a reset counts from zero."""
    if before is None or now.total < before.total:
        return now
    prev = dict(before.buckets)
    buckets = tuple((le, c - prev.get(le, 0.0)) for le, c in now.buckets)
    return WindowStats(
        now.total - before.total, now.errors - before.errors, buckets, now.sum - before.sum
    )


def quantile(q: float, buckets: Buckets) -> float | None:
    """histogram_quantile(q) over cumulative buckets; None when empty.

    A rank in the +Inf bucket answers the highest finite bound, as Prometheus does.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > below:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def error_rate(w: WindowStats) -> float | None:
    return None if w.total <= 0 else 100.0 * w.errors / w.total


def success_rate(w: WindowStats) -> float | None:
    return None if w.total <= 0 else 100.0 - 100.0 * w.errors / w.total


def p99_ms(w: WindowStats) -> float | None:
    v = quantile(0.99, w.buckets) if w.total > 0 else None
    return None if v is None else v * 1000.0


BUILTIN = {
    "request-success-rate": success_rate,
    "error-rate": error_rate,
    "request-duration": p99_ms,
}


def builtin_value(metric: str, w: WindowStats) -> float | None:
    return BUILTIN[metric](w)


def threshold_verdict(check: MetricCheck, value: float | None, no_data: Verdict) -> CheckResult:
    """A value against its min/max range."""
    if value is None:
        return CheckResult(check.name, None, check.min, check.max, no_data, "no data")
    bad = (check.min is not None and value < check.min) or (
        check.max is not None and value > check.max
    )
    verdict = Verdict.FAIL if bad else Verdict.PASS
    return CheckResult(check.name, value, check.min, check.max, verdict, _range(check, value, bad))


def _range(check: MetricCheck, value: float, bad: bool) -> str:
    if not bad:
        return ""
    if check.max is not None and value > check.max:
        return f"{value:.4g} > {check.max:g}"
    return f"{value:.4g} < {check.min:g}"


def no_data_verdict(on_no_data: str) -> Verdict:
    return Verdict.FAIL if on_no_data == "fail" else Verdict.INCONCLUSIVE


def assess(
    results: Sequence[CheckResult],
    canary_requests: float | None,
    min_requests: int,
    on_no_data: str,
) -> tuple[Verdict, str]:
    """The window's verdict: too little data first, then any failure, else pass."""
    if canary_requests is not None and canary_requests < min_requests:
        return no_data_verdict(on_no_data), (
            f"{canary_requests:g} canary requests < min_requests {min_requests}"
        )
    failed = [r for r in results if r.verdict == Verdict.FAIL]
    if failed:
        return Verdict.FAIL, "; ".join(f"{r.metric} {r.detail}".strip() for r in failed)
    if any(r.verdict == Verdict.INCONCLUSIVE for r in results):
        return Verdict.INCONCLUSIVE, "a check has no data"
    return Verdict.PASS, "all checks passed"
