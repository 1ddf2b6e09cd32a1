"""Gathering one window's check results: the awaiting half of the analysis.

The pure half (values, verdicts) is `analysis` and `judge`; this module only fetches numbers:
window deltas of the host's per-version counters (builtin) or PromQL answers (prometheus).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.canary import analysis as an
from proxy.canary import judge
from proxy.canary.analysis import CheckResult, WindowStats
from proxy.canary.machine import Verdict
from proxy.canary.providers import (
    BUILTIN_QUERIES,
    REQUESTS_QUERY,
    PrometheusProvider,
    prom_duration,
    render,
)
from proxy.config.schema import BUILTIN_METRICS, Canary, Config, MetricCheck


def to_window(snap: Any) -> WindowStats:
    """A metrics.VersionSnapshot (or anything shaped like it) as plain window stats."""
    buckets = tuple((float(le), float(c)) for le, c in snap.buckets)
    return WindowStats(float(snap.total), float(snap.errors), buckets, float(snap.sum))


@dataclass
class Baseline:
    """Cumulative snapshots at the start of the current window."""

    stable: WindowStats | None = None
    canary: WindowStats | None = None


class Collector:
    """Per-canary window bookkeeping and check evaluation."""

    def __init__(
        self, snapshot: Callable[[str, str], Any], members: Callable[[], Any] | None = None
    ) -> None:
        """`members()` (fleet mode) names whose counters `snapshot` adds up: a window in
        which it changed (a replica joined, left or restarted) is inconclusive."""
        self._snapshot = snapshot
        self._members = members
        self._counted_by: Any = None
        self.base = Baseline()

    def _now(self, c: Canary) -> tuple[WindowStats, WindowStats]:
        return to_window(self._snapshot(c.route, c.stable)), to_window(
            self._snapshot(c.route, c.canary)
        )

    def rebase(self, c: Canary) -> None:
        """Start a new window now."""
        self.base.stable, self.base.canary = self._now(c)
        self._counted_by = self._members() if self._members is not None else None

    def window(self, c: Canary) -> tuple[WindowStats, WindowStats]:
        """(stable, canary) deltas since the last rebase, then rebase."""
        s_now, c_now = self._now(c)
        out = an.delta(s_now, self.base.stable), an.delta(c_now, self.base.canary)
        self.base.stable, self.base.canary = s_now, c_now
        return out

    async def checks(
        self, config: Config, c: Canary, prom: PrometheusProvider | None
    ) -> tuple[list[CheckResult], float | None]:
        """Every metric check of the window, and the canary's request count."""
        counted_by = self._counted_by
        stable, canary = self.window(c)
        a = c.analysis
        if self._members is not None and a.provider.type != "prometheus":
            self._counted_by = self._members()
            if counted_by != self._counted_by:
                why = "a replica joined, left or restarted in the window: its counts do not add up"
                return [CheckResult("fleet", None, None, None, Verdict.INCONCLUSIVE, why)], None
        no_data = an.no_data_verdict(a.on_no_data)
        if a.provider.type == "prometheus" and prom is not None:
            return await _prom_checks(config, c, prom, no_data)
        results = [
            _builtin_check(m, stable, canary, a.judge, a.confidence, no_data) for m in a.metrics
        ]
        return results, canary.total


def _builtin_check(
    m: MetricCheck,
    stable: WindowStats,
    canary: WindowStats,
    judge_kind: str,
    confidence: float,
    no_data: Verdict,
) -> CheckResult:
    if m.name not in BUILTIN_METRICS:
        return CheckResult(m.name, None, m.min, m.max, no_data, "needs the prometheus provider")
    if judge_kind == "compare":
        return judge.compare(m.name, canary, stable, confidence)
    return an.threshold_verdict(m, an.builtin_value(m.name, canary), no_data)


async def _prom_checks(
    config: Config, c: Canary, prom: PrometheusProvider, no_data: Verdict
) -> tuple[list[CheckResult], float]:
    route = config.route(c.route)
    service = (route.service if route else "") or c.route
    interval = prom_duration(c.analysis.interval)
    results = []
    for m in c.analysis.metrics:
        template = m.query or BUILTIN_QUERIES.get(m.name, "")
        q = render(template, c.route, c.canary, m.interval or interval, service)
        value = await prom.run_query(q) if template else None
        results.append(an.threshold_verdict(m, value, no_data))
    count = await prom.run_query(render(REQUESTS_QUERY, c.route, c.canary, interval, service))
    return results, count or 0.0
