"""Table tests of the canary state machine: one case per row of TRANSITIONS, plus rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.canary import machine as m
from proxy.canary.machine import (
    Abort,
    Alert,
    NewRevision,
    Pause,
    Phase,
    Promote,
    Rejected,
    Resume,
    RunWebhooks,
    ScheduleTick,
    SetRoute,
    Settings,
    Start,
    State,
    Tick,
    Verdict,
)
from proxy.config.schema import Analysis, Canary, MatchRule, Step

PLAN = m.plan(Canary("c", "r", "v1", "v2", analysis=Analysis(step_weight=25, max_weight=50)))
CFG = Settings(plan=PLAN, threshold=2, interval=1.0, progress_deadline=10.0)
GATED = replace(
    CFG, gates=frozenset({"confirm-rollout", "confirm-traffic-increase", "confirm-promotion"})
)


def st(phase: Phase, **kw: object) -> State:
    return State(phase=phase, started_at=0.0, last_progress_at=0.0, **kw)  # type: ignore[arg-type]


def run(cfg: Settings, s: State, ev: m.Event) -> tuple[State, list[m.Command]]:
    out = m.step(cfg, s, ev, "c")
    assert not isinstance(out, Rejected), out
    return out


def routes(cmds: list[m.Command]) -> list[SetRoute]:
    return [c for c in cmds if isinstance(c, SetRoute)]


def canary_weight(cmds: list[m.Command]) -> float:
    (r,) = routes(cmds)
    assert r.weights is not None
    return r.weights["canary"]


# (settings, state, event, expected phase, expected step, expected canary weight or None)
ROWS = [
    ("start from idle", CFG, st(Phase.IDLE), Start(5.0), Phase.INITIALIZING, 0, 0.0),
    (
        "start after success",
        CFG,
        st(Phase.SUCCEEDED, promoted=True),
        Start(5.0),
        Phase.INITIALIZING,
        0,
        0.0,
    ),
    (
        "start after failure",
        CFG,
        st(Phase.FAILED, failed_checks=2),
        Start(5.0),
        Phase.INITIALIZING,
        0,
        0.0,
    ),
    (
        "new revision while progressing",
        CFG,
        st(Phase.PROGRESSING, step=1),
        NewRevision(5.0, "b"),
        Phase.INITIALIZING,
        0,
        0.0,
    ),
    ("initialized", CFG, st(Phase.INITIALIZING), Tick(1.0, hooks_ok=True), Phase.WAITING, 0, 0.0),
    ("gate open", CFG, st(Phase.WAITING), Tick(1.0, gate_ok=True), Phase.PROGRESSING, 0, 25.0),
    (
        "pass advances",
        CFG,
        st(Phase.PROGRESSING),
        Tick(1.0, Verdict.PASS),
        Phase.PROGRESSING,
        1,
        50.0,
    ),
    (
        "last pass promotes",
        CFG,
        st(Phase.PROGRESSING, step=1),
        Tick(1.0, Verdict.PASS),
        Phase.PROMOTING,
        1,
        100.0,
    ),
    (
        "last pass waits for promotion gate",
        GATED,
        st(Phase.PROGRESSING, step=1),
        Tick(1.0, Verdict.PASS, gate_ok=True),
        Phase.WAITING_PROMOTION,
        1,
        50.0,
    ),
    (
        "promotion gate opens",
        GATED,
        st(Phase.WAITING_PROMOTION, step=1),
        Tick(1.0, Verdict.PASS, gate_ok=True),
        Phase.PROMOTING,
        1,
        100.0,
    ),
    ("promoting completes", CFG, st(Phase.PROMOTING, step=1), Tick(1.0), Phase.SUCCEEDED, 1, 100.0),
    (
        "paused tick holds",
        CFG,
        st(Phase.PAUSED, paused_from=Phase.PROGRESSING),
        Tick(1.0),
        Phase.PAUSED,
        0,
        None,
    ),
    (
        "resume",
        CFG,
        st(Phase.PAUSED, paused_from=Phase.PROGRESSING, step=1),
        Resume(1.0),
        Phase.PROGRESSING,
        1,
        50.0,
    ),
    *[
        (
            f"abort from {p.value}",
            CFG,
            st(p, paused_from=Phase.PROGRESSING),
            Abort(1.0),
            Phase.FAILED,
            0,
            0.0,
        )
        for p in m.ACTIVE
    ],
    *[
        (
            f"promote from {p.value}",
            CFG,
            st(p, paused_from=Phase.PROGRESSING),
            Promote(1.0),
            Phase.PROMOTING,
            0,
            100.0,
        )
        for p in (
            Phase.INITIALIZING,
            Phase.WAITING,
            Phase.PROGRESSING,
            Phase.WAITING_PROMOTION,
            Phase.PAUSED,
        )
    ],
    *[
        (
            f"pause from {p.value}",
            CFG,
            st(p),
            Pause(1.0),
            Phase.PAUSED,
            0,
            25.0 if p in (Phase.PROGRESSING, Phase.WAITING_PROMOTION) else 0.0,
        )
        for p in (Phase.INITIALIZING, Phase.WAITING, Phase.PROGRESSING, Phase.WAITING_PROMOTION)
    ],
    *[
        (
            f"new revision from {p.value}",
            CFG,
            st(p),
            NewRevision(1.0, "x"),
            Phase.INITIALIZING,
            0,
            0.0,
        )
        for p in Phase
        if p != Phase.PROGRESSING
    ],
]


@pytest.mark.parametrize("name,cfg,state,event,phase,step_,weight", ROWS, ids=[r[0] for r in ROWS])
def test_transition_row(
    name: str,
    cfg: Settings,
    state: State,
    event: m.Event,
    phase: Phase,
    step_: int,
    weight: float | None,
) -> None:
    new, cmds = run(cfg, state, event)
    assert new.phase == phase
    assert new.step == step_
    if weight is None:
        assert routes(cmds) == []
    else:
        assert canary_weight(cmds) == weight


def test_every_table_row_is_covered() -> None:
    covered = {(type(r[3]), r[2].phase) for r in ROWS}
    assert set(m.TRANSITIONS) <= covered


@pytest.mark.parametrize("phase", [Phase.IDLE, Phase.SUCCEEDED, Phase.FAILED])
@pytest.mark.parametrize("event", [Promote(1.0), Abort(1.0), Pause(1.0), Resume(1.0)])
def test_invalid_manual_actions_are_rejected(phase: Phase, event: m.Event) -> None:
    out = m.step(CFG, st(phase), event, "c")
    assert isinstance(out, Rejected)
    assert phase.value in out.reason


def test_start_while_progressing_is_rejected() -> None:
    assert isinstance(m.step(CFG, st(Phase.PROGRESSING), Start(1.0), "c"), Rejected)


def test_failures_are_cumulative_and_roll_back_at_threshold() -> None:
    s, cmds = run(CFG, st(Phase.PROGRESSING), Tick(1.0, Verdict.FAIL))
    assert (s.phase, s.failed_checks, routes(cmds)) == (Phase.PROGRESSING, 1, [])
    s, _ = run(CFG, s, Tick(2.0, Verdict.PASS))
    assert s.failed_checks == 1
    s, cmds = run(CFG, s, Tick(3.0, Verdict.FAIL))
    assert s.phase == Phase.FAILED and s.failed_checks == 2
    assert canary_weight(cmds) == 0.0
    assert any(isinstance(c, Alert) and c.kind == "rolled-back" for c in cmds)
    assert RunWebhooks("post-rollout") in cmds


def test_inconclusive_holds_until_deadline() -> None:
    s, cmds = run(CFG, st(Phase.PROGRESSING), Tick(5.0, Verdict.INCONCLUSIVE))
    assert (s.phase, s.step, s.failed_checks, routes(cmds)) == (Phase.PROGRESSING, 0, 0, [])
    s, cmds = run(CFG, s, Tick(10.0, Verdict.INCONCLUSIVE))
    assert s.phase == Phase.FAILED and "deadline" in s.message


def test_rollback_hook_wins_over_a_holding_gate() -> None:
    s, _ = run(GATED, st(Phase.WAITING_PROMOTION, step=1), Tick(1.0, gate_ok=False, rollback=True))
    assert s.phase == Phase.FAILED


def test_closed_gates_hold() -> None:
    s, cmds = run(GATED, st(Phase.WAITING), Tick(1.0, gate_ok=False))
    assert s.phase == Phase.WAITING and routes(cmds) == []
    s, _ = run(GATED, st(Phase.PROGRESSING), Tick(1.0, Verdict.PASS, gate_ok=False))
    assert (s.phase, s.step) == (Phase.PROGRESSING, 0)
    s, _ = run(GATED, st(Phase.WAITING_PROMOTION, step=1), Tick(1.0, Verdict.PASS, gate_ok=False))
    assert s.phase == Phase.WAITING_PROMOTION


def test_failed_pre_rollout_hook_counts_as_failed_check() -> None:
    s, _ = run(CFG, st(Phase.INITIALIZING), Tick(1.0, hooks_ok=False))
    assert (s.phase, s.failed_checks) == (Phase.INITIALIZING, 1)


def test_ticks_in_terminal_phases_change_nothing() -> None:
    for p in (Phase.IDLE, Phase.SUCCEEDED, Phase.FAILED):
        assert run(CFG, st(p), Tick(1.0, Verdict.FAIL, rollback=True)) == (st(p), [])


def test_progressing_schedules_next_interval() -> None:
    _, cmds = run(CFG, st(Phase.PROGRESSING), Tick(1.0, Verdict.PASS))
    assert ScheduleTick(1.0) in cmds


RULES = (MatchRule(users=frozenset({"u1"})),)
MIXED = Canary(
    "c",
    "r",
    "v1",
    "v2",
    analysis=Analysis(
        steps=(
            Step(match=RULES),
            Step(pause=2.0),
            Step(weight=5),
            Step(pause=float("inf")),
            Step(weight=100),
        )
    ),
)


def test_steps_plan_mixes_match_weight_and_pause() -> None:
    cfg = replace(Settings.of(MIXED), threshold=5)
    s, cmds = run(cfg, st(Phase.WAITING), Tick(0.0, gate_ok=True))
    (r,) = routes(cmds)
    assert r.weights == {"stable": 100.0, "canary": 0.0} and r.match == RULES
    s, _ = run(cfg, s, Tick(1.0, Verdict.PASS))
    assert (s.step, s.phase) == (1, Phase.PROGRESSING)  # timed pause
    s, _ = run(cfg, s, Tick(2.0, Verdict.PASS))
    assert s.step == 1  # pause not over
    s, cmds = run(cfg, s, Tick(3.5, Verdict.PASS))
    assert s.step == 2 and canary_weight(cmds) == 5.0 and routes(cmds)[0].match == RULES
    s, cmds = run(cfg, s, Tick(4.5, Verdict.PASS))
    assert (s.step, s.phase) == (3, Phase.PAUSED) and canary_weight(cmds) == 5.0
    s, cmds = run(cfg, s, Resume(9.0))
    assert (s.step, s.phase) == (4, Phase.PROGRESSING) and canary_weight(cmds) == 100.0


def test_plans_per_mode() -> None:
    a = Analysis(step_weight=20, max_weight=50, iterations=3, match=RULES)
    assert [p.weight for p in m.plan(Canary("c", "r", "a", "b", analysis=a))] == [20, 40, 50]
    a2 = replace(a, step_weights=(1.0, 10.0))
    assert [p.weight for p in m.plan(Canary("c", "r", "a", "b", analysis=a2))] == [1, 10]
    bg = m.plan(Canary("c", "r", "a", "b", mode="blue-green", analysis=a))
    assert [p.kind for p in bg] == ["preview"] * 3
    ab = m.plan(Canary("c", "r", "a", "b", mode="ab", analysis=a))
    assert [(p.kind, p.match) for p in ab] == [("match", RULES)] * 3


def test_blue_green_keeps_canary_idle_until_switch() -> None:
    cfg = Settings.of(
        Canary("c", "r", "a", "b", mode="blue-green", analysis=Analysis(iterations=2))
    )
    s, cmds = run(cfg, st(Phase.WAITING), Tick(0.0, gate_ok=True))
    assert canary_weight(cmds) == 0.0
    s, cmds = run(cfg, s, Tick(1.0, Verdict.PASS))
    assert canary_weight(cmds) == 0.0
    s, cmds = run(cfg, s, Tick(2.0, Verdict.PASS))
    assert s.phase == Phase.PROMOTING and canary_weight(cmds) == 100.0


def test_state_round_trips_through_dict() -> None:
    s = State(Phase.PAUSED, 3, 2, 1.5, 2.5, Phase.PROGRESSING, False, "r7", "held")
    assert State.from_dict(s.to_dict()) == s


def test_desired_route_is_derived_from_state() -> None:
    assert m.desired_route(PLAN, st(Phase.IDLE)) == (0.0, None)
    assert m.desired_route(PLAN, st(Phase.IDLE, promoted=True)) == (100.0, None)
    assert m.desired_route(PLAN, st(Phase.PROGRESSING, step=1)) == (50.0, None)
    paused = st(Phase.PAUSED, step=1, paused_from=Phase.PROGRESSING)
    assert m.desired_route(PLAN, paused) == (50.0, None)
    assert m.desired_route(PLAN, st(Phase.FAILED, step=1)) == (0.0, None)


def test_needs_per_phase() -> None:
    assert m.needs(CFG, st(Phase.INITIALIZING)).pre_rollout
    assert m.needs(GATED, st(Phase.WAITING)).gate == "confirm-rollout"
    assert m.needs(GATED, st(Phase.PROGRESSING)).gate == "confirm-traffic-increase"
    assert m.needs(GATED, st(Phase.PROGRESSING, step=1)).gate is None
    assert m.needs(GATED, st(Phase.WAITING_PROMOTION)).gate == "confirm-promotion"
    assert m.needs(CFG, st(Phase.PROGRESSING)).analysis
    assert m.needs(CFG, st(Phase.SUCCEEDED)) == m.Needs()
