"""The canary machine's vocabulary, plain frozen data: its phases, the state it stores,
the settings it reads, the events it takes and the commands it returns.

`machine.py` holds the decisions over these; the runner builds events and executes
commands. Pure: no I/O, no clock (every event carries its `now`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.canary.plan import PlanStep, plan
from proxy.config.schema import Canary, MatchRule


class Phase(StrEnum):
    IDLE = "Idle"  # no rollout: stable takes all traffic, waiting for start or a new revision
    INITIALIZING = "Initializing"  # rollout accepted, pre-rollout webhooks run, canary at 0
    WAITING = "Waiting"  # held by the confirm-rollout gate before any traffic moves
    PROGRESSING = "Progressing"  # stepping through the plan, analysing every interval
    WAITING_PROMOTION = "WaitingPromotion"  # all steps passed, held by confirm-promotion
    PROMOTING = "Promoting"  # canary takes 100 % and is becoming the new stable
    SUCCEEDED = "Succeeded"  # promoted: the canary serves all traffic
    FAILED = "Failed"  # rolled back: stable serves all traffic
    PAUSED = "Paused"  # held by an operator or a `{pause: {}}` step until resumed


ACTIVE = frozenset(
    {
        Phase.INITIALIZING,
        Phase.WAITING,
        Phase.PROGRESSING,
        Phase.WAITING_PROMOTION,
        Phase.PROMOTING,
        Phase.PAUSED,
    }
)


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


# ---------------------------------------------------------------- state, events, commands


@dataclass(frozen=True)
class State:
    phase: Phase = Phase.IDLE
    step: int = 0
    failed_checks: int = 0
    started_at: float | None = None
    last_progress_at: float | None = None  # start of the current step: pause and deadline clock
    paused_from: Phase | None = None
    promoted: bool = False
    revision: str = ""  # the canary revision/endpoints fingerprint this state belongs to
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "step": self.step,
            "failed_checks": self.failed_checks,
            "started_at": self.started_at,
            "last_progress_at": self.last_progress_at,
            "paused_from": self.paused_from.value if self.paused_from else None,
            "promoted": self.promoted,
            "revision": self.revision,
            "message": self.message,
        }

    @staticmethod
    def from_dict(d: dict[str, object]) -> State:
        pf = d.get("paused_from")
        return State(
            phase=Phase(str(d.get("phase", "Idle"))),
            step=int(d.get("step", 0) or 0),  # type: ignore[call-overload]
            failed_checks=int(d.get("failed_checks", 0) or 0),  # type: ignore[call-overload]
            started_at=_opt_float(d.get("started_at")),
            last_progress_at=_opt_float(d.get("last_progress_at")),
            paused_from=Phase(str(pf)) if pf else None,
            promoted=bool(d.get("promoted", False)),
            revision=str(d.get("revision", "")),
            message=str(d.get("message", "")),
        )


def _opt_float(v: object) -> float | None:
    return None if v is None else float(v)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Settings:
    """What the machine needs from the config, plain values only."""

    plan: tuple[PlanStep, ...]
    threshold: int = 5
    interval: float = 60.0
    progress_deadline: float = 600.0
    gates: frozenset[str] = frozenset()  # webhook types configured (confirm-*)
    close_tunnels_on_rollback: bool = False

    @staticmethod
    def of(canary: Canary) -> Settings:
        a = canary.analysis
        return Settings(
            plan=plan(canary),
            threshold=a.threshold,
            interval=a.interval,
            progress_deadline=a.progress_deadline,
            gates=frozenset(h.type for h in a.webhooks),
            close_tunnels_on_rollback=a.close_tunnels_on_rollback,
        )


@dataclass(frozen=True)
class Start:
    now: float
    revision: str = ""


@dataclass(frozen=True)
class NewRevision:
    now: float
    revision: str


@dataclass(frozen=True)
class Tick:
    """One interval's inputs. None means "not gathered this tick"."""

    now: float
    verdict: Verdict | None = None  # analysis + rollout webhooks of the window
    hooks_ok: bool | None = None  # pre-rollout webhooks (Initializing)
    gate_ok: bool | None = None  # the confirm-* gate this phase needs
    rollback: bool = False  # a rollback webhook answered 2xx


@dataclass(frozen=True)
class Promote:
    now: float


@dataclass(frozen=True)
class Abort:
    now: float
    reason: str = "aborted by operator"


@dataclass(frozen=True)
class Pause:
    now: float


@dataclass(frozen=True)
class Resume:
    now: float


Event = Start | NewRevision | Tick | Promote | Abort | Pause | Resume


@dataclass(frozen=True)
class SetRoute:
    weights: dict[str, float] | None  # percent per role: {"stable": 90, "canary": 10}
    match: tuple[MatchRule, ...] | None  # canary match rules, None = clear
    cause: str


@dataclass(frozen=True)
class RunWebhooks:
    type: str  # post-rollout (fire and forget; results are not inputs)


@dataclass(frozen=True)
class Alert:
    kind: str  # start | step | promoted | rolled-back | paused | resumed
    text: str


@dataclass(frozen=True)
class ScheduleTick:
    seconds: float


@dataclass(frozen=True)
class Persist:
    pass


@dataclass(frozen=True)
class CloseTunnels:
    """Close the open tunnels (WebSocket) of the canary version, after a rollback."""


Command = SetRoute | RunWebhooks | Alert | ScheduleTick | Persist | CloseTunnels


@dataclass(frozen=True)
class Needs:
    """Which inputs the runner gathers before the next Tick."""

    pre_rollout: bool = False
    analysis: bool = False
    gate: str | None = None
    rollback_hook: bool = False
