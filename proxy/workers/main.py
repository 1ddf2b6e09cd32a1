"""One data-plane worker of `serve --workers N`: `python -m proxy.workers.main --fd FD`.

The supervisor starts it with one end of a socketpair as FD. The worker listens on every
listener's port with SO_REUSEPORT (the kernel spreads new connections over the workers),
routes with the State it is sent, keeps passive health (ejection) to itself, and
reports its counters back. SIGTERM drains (a second one stops at once); when the
supervisor goes away the worker drains and exits too. SIGINT and SIGHUP are ignored: a
terminal's Ctrl-C or hangup reaches the whole process group, and the supervisor acts on
them (forwarding SIGTERM, or reloading and sending the new State).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from functools import partial
from operator import attrgetter
from typing import Any

from prometheus_client import CollectorRegistry

from proxy.config.pack import unpack_config
from proxy.config.schema import Config
from proxy.dataplane.upstream import Pools
from proxy.heap import keep_config, settle_heap, tune_gc, tune_malloc
from proxy.metrics import ProxyMetrics
from proxy.net import StartupError, bind
from proxy.routing.table import BuildCache, RoutingTable, iter_build_table, retire
from proxy.tasks import run_sliced, spawn
from proxy.workers.goals import GoalRelay
from proxy.workers.wire import (
    REPORT_EVERY,
    CloseTunnels,
    Ready,
    Report,
    State,
    frame,
    read_frame,
)

log = logging.getLogger("canaryproxy.worker")


class Worker:
    """Pools + ProxyServer of one process; `apply` swaps in a new table."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.metrics = ProxyMetrics(CollectorRegistry())
        self.config: Config | None = None
        self.table: RoutingTable | None = None
        self.cache = BuildCache()  # routes compiled for earlier states, reused by the next
        self.pools: Pools | None = None
        self.server: Any = None
        self.access_log: Any = None
        self.goals = GoalRelay()

    async def apply(self, state: State) -> None:
        """Build the table aside, then swap; requests in flight keep the one they started on.

        The build reuses the routes compiled before and hands the loop back every few ms
        (a thread would not: regex compiles hold the GIL), so requests keep flowing while a
        new 1,000-route config compiles. States are applied one at a time, in order.
        """
        config = await unpack_config(state.config) if state.config else self.config
        assert config is not None
        try:
            table = await run_sliced(iter_build_table(config, state.overrides, self.cache))
        except ValueError as exc:  # the supervisor built the same table first; kept as a guard
            log.error("worker %d: routing state rejected: %s", os.getpid(), exc)
            return
        if state.config is not None:
            if self.pools is None:
                self.pools = Pools(config)
            else:
                self.pools.update(config)
            self.config = config
            self.goals.configure(config)
        assert self.pools is not None
        for subset, address, healthy in state.health:
            self.pools.set_health(subset, address, healthy)
        retire(self.table, table)
        self.table = table
        if state.config is not None and self.server is not None:
            keep_config()  # a new config after startup (settle_heap froze the first)

    async def listen(self, listeners: tuple[tuple[str, str, int], ...]) -> int:
        """Serve every (name, host, port); the first listener's port is returned."""
        from proxy.dataplane.server import ProxyServer

        assert self.config is not None and self.pools is not None
        if self.config.access_log:
            from proxy.dataplane.accesslog import AccessLog

            self.access_log = AccessLog(self.config.access_log)
        self.server = ProxyServer(
            partial(attrgetter("table"), self),  # a C-level getter: no interpreter per request
            self.pools,
            self.metrics,
            self.access_log,
            self.config.limits,
        )
        if hasattr(self.server, "goals"):
            self.server.goals = self.goals
        tls = {x.name: x.tls for x in self.config.all_listeners()}
        for name, host, port in listeners:
            # bound here, not by create_server, so that "[::]" is dual-stack as in one process
            sock = bind(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", reuse_port=True)
            await self.server.start(host, port, sock=sock, listener=name, tls=tls.get(name))
        return int(self.server.port)

    def report(self, final: bool = False) -> None:
        ejected = tuple(
            (u["name"], e["address"])
            for u in (self.pools.status() if self.pools is not None else ())
            for e in u["endpoints"]
            if e["ejected"]
        )
        counts = self.metrics.export_counts()
        report = Report(os.getpid(), counts, final, ejected, self.goals.take())
        self.writer.write(frame(report))

    async def report_loop(self, stop: asyncio.Event) -> None:
        try:
            while True:
                await asyncio.sleep(REPORT_EVERY)
                self.report()
                await self.writer.drain()
        except ConnectionError:
            stop.set()  # the supervisor is gone
        except Exception:
            # a worker that cannot report would be invisible to the controller: better
            # to exit and be restarted than to serve on uncounted
            log.exception("worker %d: cannot report; exiting", os.getpid())
            stop.set()

    async def read_loop(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        """Apply each State; at end of stream (the supervisor is gone) stop."""
        try:
            while (msg := await read_frame(reader)) is not None:
                if isinstance(msg, State):
                    await self.apply(msg)
                elif isinstance(msg, CloseTunnels) and self.server is not None:
                    from proxy.dataplane.tunnel import close_version

                    close_version(self.server, msg.route, msg.version)
        except Exception:
            # never keep serving on a routing state the supervisor no longer has
            log.exception("worker %d: cannot apply the routing state; exiting", os.getpid())
        stop.set()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.pools is not None:
            self.pools.close()
        if self.access_log is not None:
            self.access_log.close()


async def run(fd: int) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    first = await read_frame(reader)
    if not isinstance(first, State) or first.config is None:
        log.error("worker %d: no initial state from the supervisor", os.getpid())
        return 1
    worker = Worker(writer)
    await worker.apply(first)
    settle_heap()  # before serving: the collector then skips the startup config
    try:
        port = await worker.listen(first.all_listeners())
    except StartupError as exc:
        log.error("worker %d: %s", os.getpid(), exc)
        return 3
    writer.write(frame(Ready(os.getpid(), port)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [
        spawn(worker.report_loop(stop), "worker report"),
        spawn(worker.read_loop(reader, stop), "worker state"),
    ]
    await stop.wait()
    await _drain(worker)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return await _finish(worker, writer)


async def _drain(worker: Worker) -> None:
    assert worker.config is not None
    loop = asyncio.get_running_loop()
    drain = asyncio.ensure_future(worker.server.drain(worker.config.limits.drain_timeout))
    loop.add_signal_handler(signal.SIGTERM, drain.cancel)  # a second SIGTERM: stop waiting
    try:
        await drain
    except asyncio.CancelledError:
        log.warning("worker %d: closing in-flight requests now", os.getpid())


async def _finish(worker: Worker, writer: asyncio.StreamWriter) -> int:
    """Close, then send the last counts (every request answered is in them) and go."""
    await worker.close()
    try:
        worker.report(final=True)
        await asyncio.wait_for(writer.drain(), 2.0)
        writer.close()
    except (ConnectionError, TimeoutError):
        pass  # the supervisor is gone; nobody is left to count
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="canaryproxy-worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a hangup of the group is the supervisor's
    tune_malloc()
    tune_gc()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run(args.fd))


if __name__ == "__main__":
    sys.exit(main())
