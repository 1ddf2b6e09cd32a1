"""The supervisor's side of `serve --workers N`: start, feed, watch and stop the workers.

Each worker is `python -m proxy.workers.main` (a fresh interpreter: nothing is forked from
a running event loop) with one end of a socketpair. The supervisor pushes the routing
State on every change, merges the workers' counter reports into its own ProxyMetrics,
and restarts a worker that dies, with a back-off that doubles up to MAX_BACKOFF while
the worker keeps dying young.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import proxy
from proxy.config.pack import pack_config
from proxy.config.schema import Config
from proxy.metrics import ProxyMetrics
from proxy.routing.table import Overrides
from proxy.tasks import spawn
from proxy.workers.goals import GoalEvent
from proxy.workers.wire import CloseTunnels, Ready, Report, State, frame, read_frame

log = logging.getLogger("canaryproxy")

StateSource = Callable[[], tuple[Config, Overrides, tuple[tuple[str, str, bool], ...]]]
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
LIVED_LONG = 10.0  # a worker that ran this long before dying restarts without delay


class WorkerFailed(Exception):
    """A worker could not start; the message says why."""


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    config_sent: int = -1
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0
    requests: int = 0
    last_exit: int | None = None
    ejected: frozenset[tuple[str, str]] = frozenset()
    listening: bool = False


Listeners = tuple[tuple[str, str, int], ...]  # (name, host, port) of every listener


class WorkerSet:
    """N data-plane processes, each serving every listener (SO_REUSEPORT)."""

    def __init__(
        self,
        count: int,
        state: StateSource,
        metrics: ProxyMetrics,
        log_level: str = "info",
        on_goals: Callable[[tuple[GoalEvent, ...]], None] | None = None,
    ) -> None:
        """`on_goals` takes the A/B goal events the workers forward (see worker_goals)."""
        self.slots = [_Slot(i) for i in range(count)]
        self.state = state
        self.metrics = metrics
        self.log_level = log_level
        self.on_goals = on_goals
        self.listeners: Listeners = ()
        self.stopping = False
        self._stop = asyncio.Event()
        self._config: Config | None = None
        self._config_id = 0
        self._publish_due = False
        self._tasks: set[asyncio.Task] = set()

    async def start(self, listeners: Listeners, timeout: float = 30.0) -> None:
        """Start every worker and wait until each listens; WorkerFailed if one cannot."""
        self.listeners = listeners
        for slot in self.slots:
            spawn(self._supervise(slot), f"worker {slot.index}", self._tasks)
        waits = [asyncio.ensure_future(self._started(s)) for s in self.slots]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            raise WorkerFailed(f"workers did not start within {timeout:.0f} s") from None
        finally:
            for w in waits:
                w.cancel()

    async def _started(self, slot: _Slot) -> None:
        ready = asyncio.ensure_future(slot.ready.wait())
        exited = asyncio.ensure_future(slot.exited.wait())
        await asyncio.wait([ready, exited], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not slot.ready.is_set():
            raise WorkerFailed(f"worker {slot.index} exited with status {slot.last_exit}")

    # -- one slot: run, restart ----------------------------------------------------------

    async def _supervise(self, slot: _Slot) -> None:
        fails = 0
        while not self.stopping:
            started = asyncio.get_running_loop().time()
            code = await self._run_once(slot)
            if self.stopping or not slot.ready.is_set():
                return  # stopping, or it never came up: start() reports it
            lived = asyncio.get_running_loop().time() - started
            fails = 0 if lived >= LIVED_LONG else fails + 1
            delay = 0.0 if fails == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (fails - 1))
            log.error(
                "worker %d (pid %s) exited with %s; restarting in %.1f s",
                slot.index, slot.proc.pid if slot.proc else "?", _describe(code), delay,
            )  # fmt: skip
            if await self._stopped_within(delay):
                return
            slot.restarts += 1

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass
        return self.stopping

    async def _run_once(self, slot: _Slot) -> int:
        parent, child = socket.socketpair()
        try:
            proc = await self._spawn(child)
        except OSError as exc:
            parent.close()
            log.error("worker %d: cannot start: %s", slot.index, exc)
            slot.last_exit = -1
            slot.exited.set()
            return -1
        finally:
            child.close()
        slot.exited.clear()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        slot.proc, slot.writer, slot.config_sent, slot.requests = proc, writer, -1, 0
        self._send(slot)
        await self._read_reports(slot, reader)
        slot.writer, slot.ejected, slot.listening = None, frozenset(), False
        writer.close()
        code = await proc.wait()
        self.metrics.retire(proc.pid)
        slot.last_exit = code
        slot.exited.set()
        return code

    async def _spawn(self, child: socket.socket) -> asyncio.subprocess.Process:
        fd = child.fileno()
        root = os.path.dirname(os.path.dirname(os.path.abspath(proxy.__file__)))
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.workers.main", "--fd", str(fd),
            "--log-level", self.log_level,
            pass_fds=(fd,), stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip

    async def _read_reports(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        assert slot.proc is not None
        while (msg := await read_frame(reader)) is not None:
            if isinstance(msg, Report):
                self.metrics.merge(msg.pid, msg.counts)
                slot.requests = sum(s for c in msg.counts.series.values() for s in c.codes.values())
                slot.ejected = frozenset(msg.ejected)
                if msg.goals and self.on_goals is not None:
                    self.on_goals(msg.goals)
            elif isinstance(msg, Ready):
                slot.ready.set()
                slot.listening = True
                log.info("worker %d (pid %d) listening on port %d", slot.index, msg.pid, msg.port)

    # -- routing state -------------------------------------------------------------------

    def publish(self) -> None:
        """Send the current State to every worker, once per loop turn however many changes."""
        if self._publish_due:
            return
        self._publish_due = True
        asyncio.get_running_loop().call_soon(self._send_all)

    def _send_all(self) -> None:
        self._publish_due = False
        for slot in self.slots:
            self._send(slot)

    def _send(self, slot: _Slot) -> None:
        if slot.writer is None or slot.writer.is_closing():
            return
        config, overrides, health = self.state()
        if config is not self._config:
            self._config, self._config_id = config, self._config_id + 1
        fresh = slot.config_sent != self._config_id
        packed = pack_config(config) if fresh else None
        _, host, port = self.listeners[0]
        state = State(self._config_id, packed, overrides, health, host, port, self.listeners)
        slot.writer.write(frame(state))
        slot.config_sent = self._config_id

    def close_tunnels(self, route: str, version: str) -> None:
        """Every worker closes `version`'s tunnels on `route`, after the State that routes
        its clients elsewhere (publish sends on the next loop turn: so does this)."""
        asyncio.get_running_loop().call_soon(self._send_close, frame(CloseTunnels(route, version)))

    def _send_close(self, message: bytes) -> None:
        for slot in self.slots:
            if slot.writer is not None and not slot.writer.is_closing():
                slot.writer.write(message)

    # -- stop ----------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        self.stopping = True
        self._stop.set()

    def signal(self, sig: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(sig)

    async def drain(self, timeout: float) -> None:
        """SIGTERM every worker and wait for them (each drains its own connections)."""
        self._begin_stop()
        self.signal(signal.SIGTERM)
        await asyncio.wait(self._tasks, timeout=timeout + 5.0)

    async def stop(self, grace: float = 2.0) -> None:
        """SIGTERM (for a draining worker the second one: close now), SIGKILL after `grace`."""
        self._begin_stop()
        self.signal(signal.SIGTERM)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        self.signal(signal.SIGKILL)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def status(self) -> list[dict]:
        return [
            {
                "index": s.index,
                "pid": s.proc.pid if s.proc else None,
                "alive": s.proc is not None and s.proc.returncode is None,
                "listening": s.listening,
                "restarts": s.restarts,
                "requests": s.requests,
            }
            for s in self.slots
        ]

    def ejected(self) -> frozenset[tuple[str, str]]:
        """(subset, address) that some worker's passive health check has ejected now."""
        return frozenset().union(*(s.ejected for s in self.slots))

    def alive(self) -> int:
        return sum(1 for s in self.status() if s["alive"])


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
