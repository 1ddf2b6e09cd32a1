"""The canary shell: one asyncio task per canary executes what the pure machine decides.

Each tick: gather the inputs `machine.needs` names (pre-rollout / rollout / gate / rollback
webhooks, the window's checks), feed them as one `Tick` to `machine.step`, then execute the
commands (routing, persistence, alerts, scheduling). Manual actions go through the same
`step`. This is the only canary module that awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from proxy.canary import analysis as an
from proxy.canary import machine as m
from proxy.canary import webhooks as wh
from proxy.canary.collect import Collector
from proxy.canary.goals import GoalTracker
from proxy.canary.machine import Phase, Settings, State
from proxy.canary.providers import PrometheusProvider
from proxy.config.schema import Canary, Config, MatchRule
from proxy.tasks import spawn

if TYPE_CHECKING:
    from proxy.metrics import ProxyMetrics, VersionSnapshot

log = logging.getLogger("canaryproxy.canary")
STATUS_CODE = {Phase.SUCCEEDED: 1, Phase.FAILED: 2}  # others 0, as Flagger


class CanaryHost(Protocol):
    metrics: ProxyMetrics  # canary weight/status/check gauges

    def current_config(self) -> Config: ...
    def snapshot(self, route: str, version: str) -> VersionSnapshot: ...  # cumulative
    def apply_canary(
        self,
        canary: str,
        route: str,
        weights: dict[str, float] | None,
        match: tuple[str, tuple[MatchRule, ...]] | None,
        cause: str,
    ) -> None: ...
    def close_tunnels(self, route: str, version: str) -> None: ...
    def save_canary_state(self, name: str, state: dict[str, Any]) -> None: ...
    def load_canary_state(self, name: str) -> dict[str, Any] | None: ...


def fingerprint(config: Config, c: Canary) -> str:
    """What identifies a release: the canary's `revision` and its subset's endpoints."""
    up = config.upstream(c.canary)
    return c.revision + "|" + ",".join(up.endpoints if up else ())


EVENTS = {"start": m.Start, "promote": m.Promote, "abort": m.Abort, "pause": m.Pause}


class CanaryRunner:
    """The loop and the executor of one canary."""

    def __init__(self, host: CanaryHost, canary: Canary, session: aiohttp.ClientSession,
                 notifier: wh.Notifier, goals: GoalTracker) -> None:  # fmt: skip
        self.host, self.canary, self.session = host, canary, session
        self.notifier, self.goals = notifier, goals
        self.settings = Settings.of(canary)
        self.state = State()
        self.collector = Collector(host.snapshot, getattr(host, "members", None))
        self.last_checks: list[an.CheckResult] = []
        self._wake = asyncio.Event()
        self._next: float | None = None
        self._judge_at: float | None = None  # wall-clock time of the next judgement
        self.loaded = self.state  # as found at start (what a failed first commit returns to)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self, config: Config) -> None:
        """First sight: resume saved state, or wait Idle with the canary at 0."""
        fp = fingerprint(config, self.canary)
        saved = self.host.load_canary_state(self.canary.name)
        self.collector.rebase(self.canary)
        if saved is not None:
            self.state = State.from_dict(saved)
            self.loaded = self.state
            self._judge_at = saved.get("judge_at")
            if self.state.phase in m.ACTIVE:  # a finished rollout leaves manual weights alone
                self._converge("resume")
            if self.state.revision != fp and self.state.revision:
                self._apply(m.NewRevision(time.time(), fp))
            elif self.state.phase in m.ACTIVE:
                self._schedule(self._resume_delay(saved))
        else:
            self.state = State(revision=fp, message="waiting for a rollout start or a new revision")
            self.loaded = self.state
            self._converge("init")
        self._task = spawn(self._loop(), f"canary {self.canary.name}")

    def _resume_delay(self, saved: dict[str, Any]) -> float:
        """A fleet's new leader judges on the step's persisted times (when the old leader
        would have); one process restarted waits a whole window."""
        judge_at = saved.get("judge_at")
        if getattr(self.host, "resume_on_persisted_times", False) and judge_at is not None:
            return max(0.0, float(judge_at) - time.time())
        return self.settings.interval

    async def committed(self, before: State) -> bool:
        """In a fleet, the commands just executed become one fenced transaction; when it
        fails nothing happened: the state goes back to `before` and the tick comes again."""
        commit = getattr(self.host, "commit_step", None)
        if commit is None:
            return True
        try:
            await commit(self.canary.name)
            return True
        except Exception as exc:  # StoreDown, Conflict, Fenced: no step was taken
            log.warning("%s: step not taken (%s)", self.canary.name, exc)
            self.state = before
            self._schedule(min(self.settings.interval, 1.0))
            return False

    def update(self, config: Config, canary: Canary) -> None:
        """A reload: new settings; a changed revision or endpoints starts a new rollout."""
        self.canary, self.settings = canary, Settings.of(canary)
        fp = fingerprint(config, canary)
        if fp != self.state.revision:
            if self.state.promoted:
                log.warning("%s: %s was promoted; this rollout starts again from stable %s "
                            "(name the promoted subset as stable to roll forward from it)",
                            canary.name, canary.canary, canary.stable)  # fmt: skip
            self._apply(m.NewRevision(time.time(), fp))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # ------------------------------------------------------------ control

    async def action(self, verb: str) -> tuple[bool, str]:
        """An operator action; (False, reason) when the phase does not allow it."""
        now = time.time()
        ev: m.Event = m.Resume(now) if verb == "resume" else EVENTS[verb](now)
        if isinstance(ev, m.Start):
            ev = m.Start(now, fingerprint(self.host.current_config(), self.canary))
        async with self._lock:
            before = self.state
            out = self._apply(ev)
            if not isinstance(out, m.Rejected) and not await self.committed(before):
                return False, f"{self.canary.name}: the fleet store did not take the change"
        if isinstance(out, m.Rejected):
            return False, out.reason
        return True, f"{self.canary.name}: {self.state.phase.value}"

    def _apply(self, ev: m.Event) -> State | m.Rejected:
        out = m.step(self.settings, self.state, ev, self.canary.name)
        if isinstance(out, m.Rejected):
            return out
        old, (self.state, cmds) = self.state, out
        if isinstance(ev, m.Start | m.NewRevision):
            self.goals.reset(self.canary.name)
            self.last_checks = []
        self._execute(cmds, changed=old.phase != self.state.phase or old.step != self.state.step)
        return self.state

    # ------------------------------------------------------------ loop

    async def _loop(self) -> None:
        while True:
            timeout = None if self._next is None else max(0.0, self._next - _mono())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._next is not None and _mono() >= self._next:
                self._next = None
                try:
                    await self._tick()
                except Exception:  # a bad tick must not stop the canary: retry next interval
                    log.exception("%s: tick failed", self.canary.name)
                    self._schedule(self.settings.interval)

    async def _tick(self) -> None:
        before = self.state
        tick = await self._gather(before)
        gathered = getattr(self.host, "gathered", None)
        if gathered is not None and self.canary.analysis.webhooks:
            gathered()
        async with self._lock:
            if self.state is not before:  # an operator acted meanwhile: only a rollback stands
                tick = m.Tick(tick.now, rollback=tick.rollback)
            current = self.state
            if not isinstance(self._apply(tick), m.Rejected):
                await self.committed(current)

    async def _gather(self, s: State) -> m.Tick:
        need = m.needs(self.settings, s)
        hooks, payload = self.canary.analysis.webhooks, self._payload()
        rollback = wh.any_pass(self.session, hooks, "rollback", payload)
        pre = wh.run_type(self.session, hooks, "pre-rollout", payload) if need.pre_rollout else None
        gate = wh.run_type(self.session, hooks, need.gate, payload) if need.gate else None
        verdict = self._analyse() if need.analysis else None
        r, p, g, v = await asyncio.gather(
            rollback if need.rollback_hook else _none(), _opt(pre), _opt(gate), _opt(verdict)
        )
        if not need.rollback_hook:
            rollback.close()
        return m.Tick(time.time(), verdict=v, hooks_ok=p, gate_ok=g, rollback=bool(r))

    async def _analyse(self) -> m.Verdict:
        a, config = self.canary.analysis, self.host.current_config()
        rollout_ok = await wh.run_type(self.session, a.webhooks, "rollout", self._payload())
        prom = None
        if a.provider.type == "prometheus":
            prom = PrometheusProvider(self.session, a.provider.address)
        results, count = await self.collector.checks(config, self.canary, prom)
        if rollout_ok is False:
            results.append(an.CheckResult("webhook:rollout", None, None, None, m.Verdict.FAIL,
                                          "rollout webhook failed"))  # fmt: skip
        verdict, why = an.assess(results, count, a.min_requests, a.on_no_data)
        self.last_checks = results
        self._export_checks(results)
        log.info("%s: window %s (%s)", self.canary.name, verdict.value, why)
        return verdict

    # ------------------------------------------------------------ commands

    def _execute(self, cmds: list[m.Command], changed: bool) -> None:
        # Persist before routing: writes land in order, so a routing revision on disk never
        # runs ahead of the canary state it came from (kill -9 resumes consistently).
        cmds = sorted(cmds, key=lambda c: not isinstance(c, m.Persist))
        for cmd in cmds:  # the next judgement's time is part of what is persisted
            if isinstance(cmd, m.ScheduleTick):
                self._judge_at = time.time() + cmd.seconds
        for cmd in cmds:
            if isinstance(cmd, m.SetRoute):
                self._route(cmd)
            elif isinstance(cmd, m.Persist):
                self.host.save_canary_state(self.canary.name, self._record())
            elif isinstance(cmd, m.ScheduleTick):
                self._schedule(cmd.seconds)
            elif isinstance(cmd, m.CloseTunnels):
                if not self.canary.analysis.dry_run:
                    self.host.close_tunnels(self.canary.route, self.canary.canary)
            elif isinstance(cmd, m.Alert):
                self.notifier.alert(self.canary.analysis.alerts, cmd.text, self._payload())
            elif isinstance(cmd, m.RunWebhooks):
                hooks = self.canary.analysis.webhooks
                self.notifier.fire(wh.run_type(self.session, hooks, cmd.type, self._payload()))
        if changed:
            self.notifier.event(self.canary.analysis.webhooks, self._payload())
        self._export_status()

    def _route(self, cmd: m.SetRoute) -> None:
        if self.canary.analysis.dry_run:
            return  # dry run: verdicts are recorded, traffic never moves
        c = self.canary
        assert cmd.weights is not None
        weights = {c.stable: cmd.weights["stable"], c.canary: cmd.weights["canary"]}
        match = (c.canary, cmd.match) if cmd.match else None
        self.host.apply_canary(c.name, c.route, weights, match, cmd.cause)
        self.collector.rebase(c)  # each routing step is analysed on its own traffic

    def _converge(self, why: str) -> None:
        """Re-apply the routing the stored state wants (restart, first sight)."""
        cmd = m.route_command(self.settings.plan, self.state, self.canary.name)
        self._route(m.SetRoute(cmd.weights, cmd.match, f"{cmd.cause} ({why})"))
        self.host.save_canary_state(self.canary.name, self._record())
        self._export_status()

    def _schedule(self, seconds: float) -> None:
        self._next = _mono() + seconds
        self._wake.set()

    # ------------------------------------------------------------ views

    def weight(self) -> float:
        return m.desired_route(self.settings.plan, self.state)[0]

    def _record(self) -> dict[str, Any]:
        c = self.canary
        return {**self.state.to_dict(), "stable": c.stable, "canary": c.canary,
                "weight": self.weight(), "judge_at": self._judge_at}  # fmt: skip

    def _payload(self) -> dict[str, Any]:
        s = self.state
        return {"name": self.canary.name, "route": self.canary.route, "phase": s.phase.value,
                "weight": self.weight(), "step": s.step, "failed_checks": s.failed_checks,
                "checks": [r.to_dict() for r in self.last_checks],
                "rollout": f"{self.canary.name}@{int(s.started_at or 0)}",
                "epoch": getattr(self.host, "epoch", 0)}  # fmt: skip

    def _export_status(self) -> None:
        setter = getattr(self.host.metrics, "set_canary", None)
        if setter:
            setter(self.canary.name, self.weight(), STATUS_CODE.get(self.state.phase, 0))

    def _export_checks(self, results: list[an.CheckResult]) -> None:
        setter = getattr(self.host.metrics, "set_canary_check", None)
        for r in results:
            if setter and r.value is not None:
                setter(self.canary.name, r.metric, r.value)

    def status(self) -> dict[str, Any]:
        c, s = self.canary, self.state
        out: dict[str, Any] = {
            "name": c.name, "route": c.route, "mode": c.mode, "stable": c.stable,
            "canary": c.canary, "phase": s.phase.value, "weight": self.weight(),
            "step": s.step + 1 if s.started_at is not None else 0,
            "steps": m.describe(self.settings.plan), "failed_checks": s.failed_checks,
            "threshold": self.settings.threshold, "dry_run": c.analysis.dry_run,
            "last_checks": [r.to_dict() for r in self.last_checks],
            "started_at": _iso(s.started_at), "message": s.message, "promoted": s.promoted,
        }  # fmt: skip
        if c.goals:
            out["ab"] = self.goals.results(c, c.analysis.confidence)
        return out


class CanaryManager:
    """All canaries of the running config; `App` calls sync/action/status/stop."""

    def __init__(self, host: CanaryHost) -> None:
        self.host = host
        self.goals = GoalTracker()
        self.runners: dict[str, CanaryRunner] = {}
        self._session: aiohttp.ClientSession | None = None
        self._notifier: wh.Notifier | None = None

    async def sync(self, config: Config) -> None:
        """After every (re)load: start, update or stop runners to match `config.canaries`."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._notifier = wh.Notifier(self._session)
        assert self._notifier is not None
        self.goals.configure(config.canaries, config)
        wanted = {c.name: c for c in config.canaries}
        for name in [n for n in self.runners if n not in wanted]:
            await self.runners.pop(name).stop()
        for name, c in wanted.items():
            r = self.runners.get(name)
            if r is None:
                r = CanaryRunner(self.host, c, self._session, self._notifier, self.goals)
                self.runners[name] = r
                r.start(config)
                await r.committed(r.loaded)
            elif r.canary != c or fingerprint(config, c) != r.state.revision:
                before = r.state
                r.update(config, c)
                await r.committed(before)

    async def action(self, name: str, verb: str) -> tuple[bool, str]:
        """start|promote|abort|pause|resume; KeyError for an unknown canary."""
        if verb not in (*EVENTS, "resume"):
            return False, f"unknown action {verb!r}: use start|promote|abort|pause|resume"
        return await self.runners[name].action(verb)

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.runners.values()]

    async def stop(self) -> None:
        for r in self.runners.values():
            await r.stop()
        self.runners.clear()
        if self._notifier:
            await self._notifier.close()
        if self._session:
            await self._session.close()
        self._session = self._notifier = None


async def _none() -> None:
    return None


async def _opt(coro: Any) -> Any:
    return None if coro is None else await coro


def _mono() -> float:
    return asyncio.get_running_loop().time()


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
