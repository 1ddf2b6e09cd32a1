"""The canary state machine: `step(state, event) -> (state, commands)`, no I/O.

Rules it keeps:
- The stored state is minimal (phase, step index, failed checks, clocks, flags); the routing a
  state wants is *derived* by `desired_route(plan, state)`, so a reload or restart converges.
- Inputs the runner gathers (analysis verdict, webhook and gate results) arrive inside `Tick`;
  `needs(...)` tells the runner which ones the current phase uses.
- A rollback (manual abort, a 2xx rollback webhook, `threshold` failed checks, or an exceeded
  `progress_deadline`) always wins, even while a gate holds.
- Every transition is one row of `TRANSITIONS`; `tests/test_canary_machine.py` tests each row.

The phases, the state record, the events and the commands are data, in `types.py`; the
runner, the analysis modules and the tests import them from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.canary.plan import PlanStep as PlanStep  # re-exported for the machine's callers
from proxy.canary.plan import describe as describe
from proxy.canary.plan import plan as plan
from proxy.canary.types import (
    ACTIVE,
    Abort,
    Alert,
    CloseTunnels,
    Command,
    Event,
    Needs,
    NewRevision,
    Pause,
    Persist,
    Phase,
    Promote,
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
from proxy.config.schema import MatchRule

# ---------------------------------------------------------------- derived routing


def desired_route(p: tuple[PlanStep, ...], s: State) -> tuple[float, tuple[MatchRule, ...] | None]:
    """(canary weight percent, canary match rules) the state wants on the route."""
    if s.phase in (Phase.PROMOTING, Phase.SUCCEEDED):
        return 100.0, None
    if s.phase == Phase.IDLE and s.promoted:
        return 100.0, None
    hold = s.paused_from if s.phase == Phase.PAUSED else s.phase
    if hold in (Phase.PROGRESSING, Phase.WAITING_PROMOTION):
        return _carried(p, s.step)
    return 0.0, None


def _carried(p: tuple[PlanStep, ...], upto: int) -> tuple[float, tuple[MatchRule, ...] | None]:
    """Weight and match carry forward through the plan until a later step replaces them."""
    weight, match = 0.0, None
    for ps in p[: min(upto, len(p) - 1) + 1]:
        if ps.kind == "weight":
            weight = ps.weight
        elif ps.kind == "match":
            match = ps.match
    return weight, match


def route_command(p: tuple[PlanStep, ...], s: State, name: str) -> SetRoute:
    w, m = desired_route(p, s)
    label = f"canary:{name} {s.phase.value.lower()}"
    if s.phase in (Phase.PROGRESSING, Phase.WAITING_PROMOTION):
        label = f"canary:{name} step {s.step + 1} weight {w:g}"
    return SetRoute({"stable": 100.0 - w, "canary": w}, m, label)


def needs(cfg: Settings, s: State) -> Needs:
    """Inputs the runner must gather for this phase's next Tick."""
    if s.phase == Phase.INITIALIZING:
        return Needs(pre_rollout=True, rollback_hook=True)
    if s.phase == Phase.WAITING:
        return Needs(gate=_gate(cfg, "confirm-rollout"), rollback_hook=True)
    if s.phase == Phase.PROGRESSING:
        gate = _gate(cfg, "confirm-traffic-increase") if s.step + 1 < len(cfg.plan) else None
        return Needs(analysis=True, gate=gate, rollback_hook=True)
    if s.phase == Phase.WAITING_PROMOTION:
        return Needs(analysis=True, gate=_gate(cfg, "confirm-promotion"), rollback_hook=True)
    if s.phase in (Phase.PAUSED, Phase.PROMOTING):
        return Needs(rollback_hook=True)
    return Needs()


def _gate(cfg: Settings, kind: str) -> str | None:
    return kind if kind in cfg.gates else None


# ---------------------------------------------------------------- transitions

Out = tuple[State, list[Command]]
Handler = Callable[[Settings, State, Any, str], Out]


def _enter(cfg: Settings, s: State, name: str, now: float, alert: Alert | None = None) -> Out:
    """Common tail of every transition: apply routing, persist, schedule."""
    cmds: list[Command] = [route_command(cfg.plan, s, name), Persist()]
    if alert:
        cmds.append(alert)
    if s.phase in (Phase.INITIALIZING, Phase.WAITING, Phase.PROMOTING):
        cmds.append(ScheduleTick(0.0))
    return s, cmds


def _start(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    now, rev = ev.now, getattr(ev, "revision", s.revision)
    ns = State(Phase.INITIALIZING, 0, 0, now, now, None, False, rev or s.revision, "starting")
    return _enter(cfg, ns, name, now, Alert("start", f"{name}: rollout started"))


def _rollback(cfg: Settings, s: State, now: float, name: str, why: str) -> Out:
    ns = replace(s, phase=Phase.FAILED, paused_from=None, message=why)
    st, cmds = _enter(cfg, ns, name, now, Alert("rolled-back", f"{name}: rolled back: {why}"))
    closing = [CloseTunnels()] if cfg.close_tunnels_on_rollback else []
    return st, [*cmds, *closing, RunWebhooks("post-rollout")]


def _abort(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    return _rollback(cfg, s, ev.now, name, ev.reason)


def _promote(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    ns = replace(s, phase=Phase.PROMOTING, paused_from=None, message="promoting")
    return _enter(cfg, ns, name, ev.now)


def _pause(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    ns = replace(s, phase=Phase.PAUSED, paused_from=s.phase, message="paused by operator")
    return _enter(cfg, ns, name, ev.now, Alert("paused", f"{name}: paused"))


def _resume(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    now = ev.now
    back = s.paused_from or Phase.PROGRESSING
    ns = replace(s, phase=back, paused_from=None, message="resumed", last_progress_at=now)
    if back == Phase.PROGRESSING and _at_pause(cfg, s) == float("inf"):
        return _advance(cfg, ns, now, name)
    st, cmds = _enter(cfg, ns, name, now, Alert("resumed", f"{name}: resumed"))
    return st, [*cmds, ScheduleTick(cfg.interval)]


def _at_pause(cfg: Settings, s: State) -> float | None:
    if s.step < len(cfg.plan) and cfg.plan[s.step].kind == "pause":
        return cfg.plan[s.step].pause
    return None


def _advance(cfg: Settings, s: State, now: float, name: str) -> Out:
    """Next step, or WaitingPromotion/Promoting after the last one."""
    if s.step + 1 >= len(cfg.plan):
        if "confirm-promotion" in cfg.gates:
            ns = replace(s, phase=Phase.WAITING_PROMOTION, message="waiting for promotion gate")
            st, cmds = _enter(cfg, ns, name, now)
            return st, [*cmds, ScheduleTick(0.0)]
        return _promote(cfg, s, Promote(now), name)
    ns = replace(s, phase=Phase.PROGRESSING, step=s.step + 1, last_progress_at=now)
    if _at_pause(cfg, ns) == float("inf"):
        ns = replace(ns, phase=Phase.PAUSED, paused_from=Phase.PROGRESSING, message="pause step")
        return _enter(cfg, ns, name, now, Alert("paused", f"{name}: paused at step {ns.step + 1}"))
    w, _ = desired_route(cfg.plan, ns)
    ns = replace(ns, message=f"advanced to step {ns.step + 1}")
    text = f"{name}: step {ns.step + 1}/{len(cfg.plan)} weight {w:g}%"
    st, cmds = _enter(cfg, ns, name, now, Alert("step", text))
    return st, [*cmds, ScheduleTick(cfg.interval)]


def _tick_initializing(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    tick: Tick = ev
    if tick.hooks_ok is False:
        return _count_failure(cfg, s, tick.now, name, "pre-rollout webhook failed")
    ns = replace(s, phase=Phase.WAITING, message="waiting for confirm-rollout")
    return _enter(cfg, ns, name, tick.now)


def _tick_waiting(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    tick: Tick = ev
    if tick.gate_ok is False:
        return _hold(cfg, replace(s, message="waiting for confirm-rollout gate"))
    ns = replace(s, phase=Phase.PROGRESSING, step=0, last_progress_at=tick.now)
    if _at_pause(cfg, ns) == float("inf"):
        ns = replace(ns, phase=Phase.PAUSED, paused_from=Phase.PROGRESSING, message="pause step")
        return _enter(cfg, ns, name, tick.now)
    ns = replace(ns, message="step 1")
    st, cmds = _enter(cfg, ns, name, tick.now)
    return st, [*cmds, ScheduleTick(cfg.interval)]


def _tick_progressing(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    tick: Tick = ev
    if tick.verdict == Verdict.FAIL:
        return _count_failure(cfg, s, tick.now, name, "check failed")
    pause = _at_pause(cfg, s)
    if pause is not None and tick.now - (s.last_progress_at or tick.now) < pause:
        return _hold(cfg, replace(s, message=f"pause step {s.step + 1}"))
    if tick.verdict == Verdict.INCONCLUSIVE and pause is None:
        return _inconclusive(cfg, s, tick.now, name)
    if tick.gate_ok is False:
        return _hold(cfg, replace(s, message="waiting for confirm-traffic-increase gate"))
    return _advance(cfg, s, tick.now, name)


def _tick_waiting_promotion(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    tick: Tick = ev
    if tick.verdict == Verdict.FAIL:
        return _count_failure(cfg, s, tick.now, name, "check failed")
    if tick.gate_ok is False:
        return _hold(cfg, replace(s, message="waiting for confirm-promotion gate"))
    return _promote(cfg, s, Promote(tick.now), name)


def _tick_promoting(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    now = ev.now
    ns = replace(s, phase=Phase.SUCCEEDED, promoted=True, message="promoted")
    st, cmds = _enter(cfg, ns, name, now, Alert("promoted", f"{name}: promoted"))
    return st, [*cmds, RunWebhooks("post-rollout")]


def _count_failure(cfg: Settings, s: State, now: float, name: str, why: str) -> Out:
    n = s.failed_checks + 1
    if n >= cfg.threshold:
        return _rollback(
            cfg, replace(s, failed_checks=n), now, name, f"{why} ({n}/{cfg.threshold})"
        )
    ns = replace(s, failed_checks=n, message=f"{why} ({n}/{cfg.threshold})")
    return ns, [Persist(), ScheduleTick(cfg.interval)]


def _inconclusive(cfg: Settings, s: State, now: float, name: str) -> Out:
    since = s.last_progress_at if s.last_progress_at is not None else now
    if now - since >= cfg.progress_deadline:
        return _rollback(cfg, s, now, name, "progress deadline exceeded without enough data")
    return _hold(cfg, replace(s, message="not enough data: holding weight"))


def _hold(cfg: Settings, s: State) -> Out:
    return s, [Persist(), ScheduleTick(cfg.interval)]


def _tick_rollback_hook(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    return _rollback(cfg, s, ev.now, name, "rollback webhook")


def _tick_paused(cfg: Settings, s: State, ev: Any, name: str) -> Out:
    return s, [ScheduleTick(cfg.interval)]


P = Phase
_ANY_ACTIVE = tuple(ACTIVE)
_PAUSABLE = (P.INITIALIZING, P.WAITING, P.PROGRESSING, P.WAITING_PROMOTION)
_PROMOTABLE = (P.INITIALIZING, P.WAITING, P.PROGRESSING, P.WAITING_PROMOTION, P.PAUSED)

# (event type, phase) -> handler. Every row has a test in tests/test_canary_machine.py.
TRANSITIONS: dict[tuple[type, Phase], Handler] = {
    **{(Start, p): _start for p in (P.IDLE, P.SUCCEEDED, P.FAILED)},
    **{(NewRevision, p): _start for p in Phase},
    **{(Abort, p): _abort for p in _ANY_ACTIVE},
    **{(Promote, p): _promote for p in _PROMOTABLE},
    **{(Pause, p): _pause for p in _PAUSABLE},
    (Resume, P.PAUSED): _resume,
    (Tick, P.INITIALIZING): _tick_initializing,
    (Tick, P.WAITING): _tick_waiting,
    (Tick, P.PROGRESSING): _tick_progressing,
    (Tick, P.WAITING_PROMOTION): _tick_waiting_promotion,
    (Tick, P.PROMOTING): _tick_promoting,
    (Tick, P.PAUSED): _tick_paused,
}


@dataclass(frozen=True)
class Rejected:
    reason: str
    commands: list[Command] = field(default_factory=list)


def step(cfg: Settings, s: State, ev: Event, name: str = "canary") -> Out | Rejected:
    """Apply one event. Invalid (event, phase) pairs return `Rejected` and change nothing."""
    if isinstance(ev, Tick) and ev.rollback and s.phase in ACTIVE:
        return _tick_rollback_hook(cfg, s, ev, name)
    handler = TRANSITIONS.get((type(ev), s.phase))
    if handler is None:
        if isinstance(ev, Tick):
            return s, []
        verb = type(ev).__name__.lower()
        return Rejected(f"cannot {verb} {name}: phase is {s.phase.value}")
    return handler(cfg, s, ev, name)
