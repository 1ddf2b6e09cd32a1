"""A rollout's plan: the ordered steps derived from a canary's mode and analysis. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config.schema import Canary, MatchRule, Step


@dataclass(frozen=True)
class PlanStep:
    """One step of a rollout. kind: weight | match | pause | preview (blue-green analysis)."""

    kind: str
    weight: float = 0.0
    match: tuple[MatchRule, ...] = ()
    pause: float = 0.0  # seconds; inf = until resumed


def plan(canary: Canary) -> tuple[PlanStep, ...]:
    """The ordered steps of a rollout, from the canary's mode and analysis settings."""
    a = canary.analysis
    if canary.mode == "blue-green":
        return tuple(PlanStep("preview") for _ in range(max(a.iterations, 1)))
    if canary.mode == "ab":
        return tuple(PlanStep("match", match=a.match) for _ in range(max(a.iterations, 1)))
    if a.steps:
        return tuple(_from_step(s) for s in a.steps)
    if a.step_weights:
        return tuple(PlanStep("weight", weight=w) for w in a.step_weights)
    return tuple(PlanStep("weight", weight=w) for w in _stepped(a.step_weight, a.max_weight))


def _stepped(step: float, top: float) -> list[float]:
    if step <= 0:
        return [top]
    out: list[float] = []
    w = step
    while w < top - 1e-9:
        out.append(round(w, 6))
        w += step
    out.append(top)
    return out


def _from_step(s: Step) -> PlanStep:
    weight, match, pause = s.weight, s.match, s.pause
    if weight is not None:
        return PlanStep("weight", weight=float(weight))
    if match is not None:
        return PlanStep("match", match=tuple(match))
    return PlanStep("pause", pause=float(pause if pause is not None else float("inf")))


def describe(p: tuple[PlanStep, ...]) -> list[dict[str, object]]:
    """The planned timeline as JSON-able rows for status."""
    rows: list[dict[str, object]] = []
    for s in p:
        row: dict[str, object] = {"kind": s.kind}
        if s.kind == "weight":
            row["weight"] = s.weight
        elif s.kind == "match":
            row["match_rules"] = len(s.match)
        elif s.kind == "pause":
            row["pause"] = None if s.pause == float("inf") else s.pause
        rows.append(row)
    return rows
