"""`canaryproxy serve`: run the App until SIGTERM/SIGINT, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from argparse import Namespace

from proxy.app import App
from proxy.heap import tune_gc, tune_malloc
from proxy.net import StartupError

log = logging.getLogger("canaryproxy")


def run_serve(args: Namespace) -> int:
    """Run until SIGTERM/SIGINT (drain, exit 0). Exit 1: bad config; 2: unsafe admin."""
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    workers = int(getattr(args, "workers", 1))
    if workers < 1:
        print(f"--workers must be at least 1, not {workers}", file=sys.stderr)
        return 2
    tune_malloc()
    tune_gc()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(args, workers))


async def _serve(args: Namespace, workers: int = 1) -> int:
    app = App(
        args.config,
        args.state_dir,
        workers=workers,
        log_level=str(args.log_level),
        store=getattr(args, "store", "") or "",
        replica=getattr(args, "replica", "") or "",
        election_ttl=float(getattr(args, "election_ttl", 5.0)),
    )
    try:
        await app.start()
    except StartupError as exc:
        print(str(exc), file=sys.stderr)
        await _quiet_stop(app)
        return exc.code
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_on_hup, app)
    await stop.wait()
    assert app.config is not None
    started = time.monotonic()
    log.info("draining (up to %.0f s)", app.config.limits.drain_timeout)
    drain = asyncio.ensure_future(app.drain(app.config.limits.drain_timeout))
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: stop waiting
        loop.add_signal_handler(sig, drain.cancel)
    try:
        await drain
    except asyncio.CancelledError:
        log.warning("second stop signal: closing in-flight requests now")
    await app.stop()
    log.info("stopped after %.1f s of draining", time.monotonic() - started)
    return 0


def _reload_on_hup(app: App) -> None:
    app.spawn(_hup_reload(app), "SIGHUP reload")


async def _hup_reload(app: App) -> None:
    result = await app.reload_async()
    log.info("SIGHUP: reload %s", result["result"])


async def _quiet_stop(app: App) -> None:
    try:
        await app.stop()
    except Exception:  # noqa: BLE001 - best effort after a failed start
        log.debug("cleanup after failed start", exc_info=True)
