"""`canaryproxy demo`: two built-in versions, the proxy, a steady load and a real rollout.

Needs no file and no other program. The rollout follows the gray-release practice of the
seed document: an allow-list of test users first, then growing random percentages to 100 %.
It prints its plan (steps, checks, interval, threshold), then a line a second and one at each
step (phase, v2's share, per-version rps / error % / p99, failed checks), and ends with a
summary and a one-line result; exit 0 whether v2 was promoted or rolled back. No line is wider
than MAX_COLUMNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, TextIO

import aiohttp

from proxy.config.schema import Canary, MetricCheck, Step
from proxy.config.validate import parse_duration
from proxy.demo_upstream import Behaviour, Upstream
from proxy.tasks import spawn

TEST_USER = "test-user-001"
TEST_USER_SHARE = 10  # every 10th request comes from the allow-listed tester
DONE = {"Succeeded", "Failed"}

STEP_WEIGHTS = tuple(range(5, 101, 5))  # after the allow-list step
MAX_COLUMNS = 99  # every printed line fits a 100-column terminal

CONFIG = """\
# written by `canaryproxy demo`
listen: "{listen}"
admin: {{listen: "{admin}"}}
access_log: false
upstreams:
  v1: {{endpoints: ["{v1}"], health_check: {{path: /health, interval: 2s}}}}
  v2: {{endpoints: ["{v2}"], health_check: {{path: /health, interval: 2s}}}}
routes:
  - name: default
    route: [{{destination: v1, weight: 100}}, {{destination: v2, weight: 0}}]
canaries:
  - name: demo
    route: default
    stable: v1
    canary: v2
    analysis:
      interval: {interval}s
      threshold: 2
      min_requests: {min_requests}
      progress_deadline: 1m
      steps:
        - match: [{{users: [{user}]}}]
{weights}
      metrics:
        - {{name: request-success-rate, min: 99}}
        - {{name: error-rate, max: 1}}
        - {{name: request-duration, max: 500}}
"""
WEIGHT_STEP = "        - {{weight: {}}}"


def render_config(
    listen: str, admin: str, v1: str, v2: str, interval: float, min_requests: int
) -> str:
    """The demo's config file."""
    return CONFIG.format(
        listen=listen, admin=admin, v1=v1, v2=v2, interval=f"{interval:g}", user=TEST_USER,
        min_requests=min_requests, weights="\n".join(WEIGHT_STEP.format(w) for w in STEP_WEIGHTS),
    )  # fmt: skip


class Windows:
    """Counts the analysis windows of a canary: its runner keeps the results of the last one
    in a list it replaces once a window, and windows are at least an interval apart."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.last: list[Any] = runner.last_checks
        self.count = 0

    def see(self) -> None:
        checks = self.runner.last_checks
        if checks is not self.last:
            self.last = checks
            self.count += bool(checks)  # a new rollout clears the list: no window ran


@dataclass
class Load:
    """A steady open-loop load: `rps` requests a second, every 10th from the tester."""

    url: str
    rps: float
    sent: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, session: aiohttp.ClientSession) -> None:
        gap = 1.0 / max(self.rps, 0.1)
        next_at = time.monotonic()
        while True:
            self.sent += 1
            headers = {"user-id": TEST_USER if self.sent % TEST_USER_SHARE == 0 else ""}
            task = spawn(_one(session, self.url, headers), "demo request")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url, headers=headers) as r:
            await r.read()


# --- what the demo prints: pure functions of the canary's config and status ----------------

# metric -> (how the plan names it, unit, short name for a crowded live line)
CHECKS = {
    "request-success-rate": ("success rate", " %", "success"),
    "error-rate": ("error rate", " %", "errors"),
    "request-duration": ("P99", " ms", "p99"),
}


def fit(*candidates: str) -> str:
    """The first candidate no wider than MAX_COLUMNS, else the last one cut to fit."""
    for c in candidates:
        if len(c) <= MAX_COLUMNS:
            return c
    return candidates[-1][:MAX_COLUMNS]


def plan_lines(canary: Canary, user_header: str) -> list[str]:
    """The rollout before it starts: its steps, checks, interval and threshold."""
    a = canary.analysis
    n = a.threshold
    lines = [
        f"plan      {len(a.steps)} steps, then v2 is promoted; a step lasts at least one interval",
        *_step_lines(a.steps, user_header),
        f"checks    {', '.join(_limit(m) for m in a.metrics)} (on v2's traffic)",
        f"interval  {a.interval:g}s: each window is judged; under {a.min_requests} requests "
        "it is inconclusive and the step holds",
        f"threshold {n}: the {_nth(n)} failed check rolls v2 back to 0 %",
        "live      time phase step | v2 share | v1, v2: rps, 5xx %, p99 | failed checks",
    ]
    return [fit(ln) for ln in lines]


def _limit(m: MetricCheck) -> str:
    label, unit, _ = CHECKS.get(m.name, (m.name, "", ""))
    if m.min is not None:
        return f"{label} >= {m.min:g}{unit}"
    return f"{label} <= {m.max:g}{unit}" if m.max is not None else label


def _nth(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _step_lines(steps: tuple[Step, ...], user_header: str) -> list[str]:
    """One line per allow-list or pause step; one per run of weight steps."""
    lines: list[str] = []
    i, testers = 0, False
    while i < len(steps):
        j = i
        while _weight(steps[i]) and j + 1 < len(steps) and _weight(steps[j + 1]):
            j += 1
        where = f"{i + 1}-{j + 1}" if j > i else f"{i + 1}"
        testers = testers or steps[i].match is not None
        lines.append(fit(*(f"  {where:<8}{text}" for text in _step_text(
            steps[i : j + 1], user_header, testers))))  # fmt: skip
        i = j + 1
    return lines


def _weight(s: Step) -> bool:
    return s.weight is not None


def _step_text(run: tuple[Step, ...], user_header: str, testers: bool) -> list[str]:
    """A run of steps in words, the longer way first."""
    s = run[0]
    if s.match is not None:
        users = [u for r in s.match for u in sorted(r.users or ())]
        only = "(0 % of weighted traffic)"
        if not all(r.users for r in s.match):
            return [f"allow-list: only matching requests reach v2 {only}"]
        return [
            f"allow-list: only requests with {user_header} {', '.join(users)} reach v2 {only}",
            f"allow-list: only {len(users)} listed users reach v2 {only}",
        ]
    if s.pause is not None:
        return ["pause until resumed" if s.pause == float("inf") else f"pause {s.pause:g}s"]
    weights = [f"{st.weight:g} %" for st in run]
    if len(weights) > 6:
        weights = [*weights[:3], "...", *weights[-2:]]
    keep = "; testers keep v2" if testers else ""
    return [f"v2 at {', '.join(weights)} of weighted traffic{keep}"]


def live_line(elapsed: float, canary: dict[str, Any], versions: dict[str, dict]) -> str:
    """One line of the live view: phase and step, v2's share, each version's numbers, and the
    failed checks; what does not fit MAX_COLUMNS is said shorter."""
    steps, step = canary.get("steps", []), canary.get("step", 0)
    where = f"{step}/{len(steps)}" if step and steps else ""
    head = f"{elapsed:4.1f}s {canary['phase']:<11} {where:>5}"
    v1, v2 = versions.get("v1", {}), versions.get("v2", {})
    failed = _failed(canary)
    if _testers_only(canary):
        testers = f"{v2.get('rps', 0):.0f} rps from testers, {_numbers(v2)}"
        share = f"v2 0 % of weighted traffic, {testers}"
        bodies = [f"{head} {share} | v1 {v1.get('rps', 0):6.1f} rps", f"{head} {share}"]
        last = f"{head} v2 {testers}{failed[-1]}"
    else:
        share = f"v2 {canary['weight']:3.0f}%"
        bodies = [f"{head} {share} | {_version('v1', v1)} | {_version('v2', v2)}"]
        last = f"{head} {share} | v1 {v1.get('rps', 0):6.1f} rps | {_version('v2', v2)}{failed[-1]}"
    return fit(*(body + checks for checks in failed for body in bodies), last)


def _failed(canary: dict[str, Any]) -> list[str]:
    """The failed checks of the last window, from the longest way to say it to the shortest."""
    failed = [c["metric"] for c in canary.get("last_checks", []) if c["verdict"] == "fail"]
    if not failed:
        return [""]
    short = [CHECKS.get(m, ("", "", m))[2] for m in failed]
    return [
        " | " + " ".join(f"{m}=fail" for m in failed),
        " | " + " ".join(f"{m}=fail" for m in short),
        f" | {len(failed)} checks fail",
    ]


def _testers_only(canary: dict[str, Any]) -> bool:
    """In an allow-list step: no weighted traffic, only the listed users reach v2."""
    if canary["phase"] not in ("Progressing", "Paused") or canary["weight"] > 0:
        return False
    return any(s["kind"] == "match" for s in canary.get("steps", [])[: canary.get("step", 0)])


def _version(v: str, r: dict[str, Any]) -> str:
    return f"{v} {r.get('rps', 0):6.1f} rps {_numbers(r)}"


def _numbers(r: dict[str, Any]) -> str:
    return f"{r.get('error_pct', 0):.1f}% {r.get('p99_ms', 0):.0f}ms"


def summary_line(canary: dict[str, Any], elapsed: float, windows: int) -> str:
    """`Succeeded: 21/21 steps passed, 21 checks run, 0 failed, 7.4s`."""
    total, step = len(canary.get("steps", [])), canary.get("step", 0)
    passed = total if canary["phase"] == "Succeeded" else max(step - 1, 0)
    return (
        f"summary {canary['phase']}: {passed}/{total} steps passed, "
        f"{windows} checks run, {canary['failed_checks']} failed, {elapsed:.1f}s"
    )


def result_line(canary: dict[str, Any], elapsed: float, interval: float) -> str:
    """`promoted v2 in 42s` or `rolled back v2: error-rate 5.1% > 1% ...`."""
    if canary["phase"] == "Succeeded":
        return f"promoted v2 in {elapsed:.0f}s"
    failed = [c for c in canary.get("last_checks", []) if c["verdict"] == "fail"]
    why = "; ".join(_why(c) for c in failed) or canary.get("message", "")
    tail = (
        f" ({canary['failed_checks']} failed checks, "
        f"after {elapsed:.0f}s = {elapsed / interval:.1f} intervals)"
    )
    return fit(f"rolled back v2: {why}{tail}", f"rolled back v2: {why}")


def _why(c: dict[str, Any]) -> str:
    unit = " ms" if c["metric"] == "request-duration" else "%"
    if c.get("max") is not None and c["value"] is not None and c["value"] > c["max"]:
        return f"{c['metric']} {c['value']:.3g}{unit} > {c['max']:g}{unit}"
    if c.get("min") is not None and c["value"] is not None:
        return f"{c['metric']} {c['value']:.3g}{unit} < {c['min']:g}{unit}"
    return f"{c['metric']} {c.get('detail', '')}"


class Demo:
    def __init__(self, args: Namespace, out: TextIO) -> None:
        self.args, self.out = args, out
        self.interval = parse_duration(args.interval)
        self.v1 = Upstream(Behaviour("v1"))
        self.v2 = Upstream(
            Behaviour("v2", error_rate=args.v2_error_rate, latency_ms=args.v2_latency_ms)
        )
        self.app: Any = None
        self._tmp = tempfile.TemporaryDirectory(prefix="canaryproxy-demo-")

    async def start(self) -> None:
        from proxy.app import App

        await self.v1.start()
        await self.v2.start()
        path = f"{self._tmp.name}/demo.yaml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.config_text())
        self.app = App(path, self.args.state_dir or f"{self._tmp.name}/state")
        await self.app.start()
        self.say(
            f"proxy http://127.0.0.1:{self.app.proxy_port}  "
            f"admin http://127.0.0.1:{self.app.admin_port}"
        )
        self.say(f"config {path}")

    def show_plan(self) -> None:
        config = self.app.config
        assert config is not None
        (canary,) = config.canaries
        for line in plan_lines(canary, config.identity.user_header):
            self.say(line)

    def config_text(self) -> str:
        return render_config(
            self.args.listen, self.args.admin_listen, self.v1.address, self.v2.address,
            self.interval, self.min_requests(),
        )  # fmt: skip

    def min_requests(self) -> int:
        """Half of what the tester alone sends in a window, so the first step has data."""
        return max(3, round(0.5 * self.args.rps / TEST_USER_SHARE * self.interval))

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def canary(self) -> dict[str, Any]:
        (c,) = self.app.canaries.status()
        return dict(c)

    def versions(self) -> dict[str, dict]:
        m = self.app.metrics
        return {v: m.version_rates("default", v) for v in ("v1", "v2")}

    async def watch(self, stop: asyncio.Event) -> dict[str, Any] | None:
        """A line a second and one at each step, until the rollout ends (or Ctrl-C).

        Polls several times an interval, so that no step and no analysis window goes unseen.
        """
        self.show_plan()
        started = time.monotonic()
        _, msg = await self.app.canaries.action("demo", "start")
        self.say(f"rollout start: {msg}")
        windows, shown, next_line = Windows(self.app.canaries.runners["demo"]), None, 0.0
        c = self.canary()
        while not stop.is_set():
            c, now = self.canary(), time.monotonic()
            windows.see()
            if (c["phase"], c["step"]) != shown or now >= next_line or c["phase"] in DONE:
                self.say(live_line(now - started, c, self.versions()))
                shown, next_line = (c["phase"], c["step"]), now + 1.0
            if c["phase"] in DONE:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(0.1, self.interval / 3))
        elapsed = time.monotonic() - started
        self.say(summary_line(c, elapsed, windows.count))
        if c["phase"] not in DONE:
            self.say(f"stopped at step {c['step']}/{len(c['steps'])} before the rollout ended")
            return None
        self.say(result_line(c, elapsed, self.interval))
        return c

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
        await self.v1.stop()
        await self.v2.stop()
        self._tmp.cleanup()


async def demo_main(args: Namespace, out: TextIO = sys.stdout) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        demo = Demo(args, out)
    except ValueError as exc:
        print(f"canaryproxy demo: --interval: {exc}", file=sys.stderr)
        return 2
    load_task: asyncio.Task[None] | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            try:
                await demo.start()
            except Exception as exc:  # noqa: BLE001 - e.g. StartupError: port in use
                print(f"canaryproxy demo: {exc}", file=sys.stderr)
                return 1
            load = Load(f"http://127.0.0.1:{demo.app.proxy_port}/", args.rps)
            load_task = spawn(load.run(session), "demo load")
            await demo.watch(stop)
            if args.keep_running and not stop.is_set():
                demo.say("--keep-running: everything stays up; Ctrl-C to stop")
                await stop.wait()
        finally:
            if load_task is not None:
                load_task.cancel()
                await asyncio.gather(load_task, *load.tasks, return_exceptions=True)
            await demo.stop()
    return 0


def run_demo(args: Namespace) -> int:
    """Entry point of `canaryproxy demo`; exit 0 after promotion or rollback."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(demo_main(args))
