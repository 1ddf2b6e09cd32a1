"""Background tasks: the one way to start them; long work on the loop, in slices.

The event loop keeps only a weak reference to a task, so a task nobody holds can vanish
mid-flight, and an exception in a task nobody awaits is reported only when the task is
collected, if ever. `spawn` holds every task until it ends, names it, and logs its crash
at once, with the name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Generator, MutableSet
from typing import Any, TypeVar

log = logging.getLogger("canaryproxy")
T = TypeVar("T")
_RUNNING: set[asyncio.Task[Any]] = set()


def spawn(
    coro: Coroutine[Any, Any, T], name: str, keep: MutableSet[asyncio.Task[Any]] | None = None
) -> asyncio.Task[T]:
    """Start `coro` on the running loop as the task `name`.

    `keep` (default: one set for the process) holds the task until it ends, so an owner
    can cancel what it started; a crash (anything but cancellation) is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    holder = _RUNNING if keep is None else keep
    holder.add(task)
    task.add_done_callback(holder.discard)
    task.add_done_callback(log_crash)
    return task


def log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s crashed", task.get_name(), exc_info=task.exception())


# Sliced work yields the loop after this much: requests wait at most about this long.
SLICE = 0.002


async def run_sliced(steps: Generator[Any, None, T], slice_s: float = SLICE) -> T:
    """Drive the generator `steps` to its return value, handing the loop back every
    `slice_s` seconds of work, so a long job on the loop (a cold 1,000-route build, a few
    hundred ms) never stalls requests for longer. A thread would not help where the work
    holds the GIL (regex compiles, unpickling)."""
    clock = time.perf_counter
    deadline = clock() + slice_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        if clock() >= deadline:
            await asyncio.sleep(0)
            deadline = clock() + slice_s
