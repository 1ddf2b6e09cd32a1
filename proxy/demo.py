"""`canaryproxy demo`: two built-in versions, the proxy, a steady load and a real rollout.

Needs no file and no other program. The rollout follows the gray-release practice of the
seed document: an allow-list of test users first, then growing random percentages to 100 %.
It prints one line a second (weight, per-version rps / error % / p99, phase, verdicts) and
ends with a one-line result; exit 0 whether v2 was promoted or rolled back.
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

from proxy.config.validate import parse_duration
from proxy.demo_upstream import Behaviour, Upstream

TEST_USER = "test-user-001"
TEST_USER_SHARE = 10  # every 10th request comes from the allow-listed tester
DONE = {"Succeeded", "Failed"}

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
        - {{weight: 5}}
        - {{weight: 10}}
        - {{weight: 15}}
        - {{weight: 20}}
        - {{weight: 25}}
        - {{weight: 30}}
        - {{weight: 35}}
        - {{weight: 40}}
        - {{weight: 45}}
        - {{weight: 50}}
        - {{weight: 55}}
        - {{weight: 60}}
        - {{weight: 65}}
        - {{weight: 70}}
        - {{weight: 75}}
        - {{weight: 80}}
        - {{weight: 85}}
        - {{weight: 90}}
        - {{weight: 95}}
        - {{weight: 100}}
      metrics:
        - {{name: request-success-rate, min: 99}}
        - {{name: error-rate, max: 1}}
        - {{name: request-duration, max: 500}}
"""


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
            task = asyncio.create_task(_one(session, self.url, headers))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            next_at += gap
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(url, headers=headers) as r:
            await r.read()


def live_line(elapsed: float, canary: dict[str, Any], versions: dict[str, dict]) -> str:
    """One line of the live view."""
    parts = [f"{elapsed:5.1f}s", f"{canary['phase']:<16}", f"v2 weight {canary['weight']:5.1f}%"]
    for v in ("v1", "v2"):
        r = versions.get(v, {})
        parts.append(
            f"{v} {r.get('rps', 0):6.1f} rps {r.get('error_pct', 0):5.1f}% err "
            f"p99 {r.get('p99_ms', 0):6.1f} ms"
        )
    checks = " ".join(f"{c['metric']}={c['verdict']}" for c in canary.get("last_checks", []))
    return " | ".join(parts) + (f" | {checks}" if checks else "")


def result_line(canary: dict[str, Any], elapsed: float, interval: float) -> str:
    """`promoted v2 in 42s` or `rolled back v2: error-rate 5.1% > 1% ...`."""
    if canary["phase"] == "Succeeded":
        return f"promoted v2 in {elapsed:.0f}s"
    failed = [c for c in canary.get("last_checks", []) if c["verdict"] == "fail"]
    why = "; ".join(_why(c) for c in failed) or canary.get("message", "")
    return (
        f"rolled back v2: {why} ({canary['failed_checks']} failed checks, "
        f"after {elapsed:.0f}s = {elapsed / interval:.1f} intervals)"
    )


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
        self.rollback_at: float | None = None
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
            f"admin http://127.0.0.1:{self.app.admin_port}  (config {path})"
        )

    def config_text(self) -> str:
        return CONFIG.format(
            listen=self.args.listen, admin=self.args.admin_listen, v1=self.v1.address,
            v2=self.v2.address, interval=f"{self.interval:g}", user=TEST_USER,
            min_requests=self.min_requests(),
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
        """Print once a second until the rollout ends (or Ctrl-C)."""
        started = time.monotonic()
        ok, msg = await self.app.canaries.action("demo", "start")
        self.say(f"rollout start: {msg}")
        while not stop.is_set():
            c = self.canary()
            self.say(live_line(time.monotonic() - started, c, self.versions()))
            if c["phase"] in DONE:
                self.say(result_line(c, time.monotonic() - started, self.interval))
                return c
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return None

    async def stop(self) -> None:
        if self.app is not None:
            watcher = getattr(self.app, "_watcher", None)
            if watcher is not None and asyncio.iscoroutinefunction(watcher.stop):
                await watcher.stop()  # App.stop() does not await it yet
                self.app._watcher = None
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
            load_task = asyncio.create_task(load.run(session))
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
