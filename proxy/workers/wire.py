"""Messages between the supervisor and its data-plane workers (`serve --workers N`).

One socketpair per worker carries length-prefixed pickles both ways. Both ends are
processes of this program started by the supervisor, so pickle is trusted here and
lets the validated Config travel as it is (no second parse, no second opinion).

supervisor -> worker: `State` whenever routing, config or active health changes;
`CloseTunnels` when a rollback closes a version's tunnels.
worker -> supervisor: `Ready` once listening, then `Report` every REPORT_EVERY seconds
and once more after draining.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from proxy.config.pack import PackedConfig
from proxy.routing.table import Overrides
from proxy.workers.counts import Counts

REPORT_EVERY = 0.25  # seconds; the controller and /metrics lag the data plane by at most this
_HEAD = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024
# A 1,000-route Config is ~300 KiB of pickle and ~15 ms to load: off the event loop.
LOAD_IN_THREAD = 64 * 1024


@dataclass(frozen=True)
class State:
    """Everything a worker needs to route: `config` is None when unchanged since the last."""

    config_id: int
    config: PackedConfig | None
    overrides: Overrides
    health: tuple[tuple[str, str, bool], ...]  # (subset, address, healthy) from active checks
    host: str  # the first listener's address
    port: int
    # every listener, (name, host, port), in config order; empty: one "default" on host:port
    listeners: tuple[tuple[str, str, int], ...] = ()

    def all_listeners(self) -> tuple[tuple[str, str, int], ...]:
        return self.listeners or (("default", self.host, self.port),)


@dataclass(frozen=True)
class CloseTunnels:
    """Close the open tunnels of (route, version) now (a rollback that asks for it)."""

    route: str
    version: str


@dataclass(frozen=True)
class Ready:
    pid: int
    port: int


@dataclass(frozen=True)
class Report:
    pid: int
    counts: Counts
    final: bool = False
    ejected: tuple[tuple[str, str], ...] = ()  # (subset, address) passive health has ejected
    goals: tuple[tuple[str, str, str, str, str], ...] = ()  # worker_goals.GoalEvent


def frame(msg: Any) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any | None:
    """The next message, or None at end of stream (the other process is gone)."""
    try:
        head = await reader.readexactly(_HEAD.size)
        (size,) = _HEAD.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes")
        body = await reader.readexactly(size)
        if size > LOAD_IN_THREAD:
            return await asyncio.to_thread(pickle.loads, body)
        return pickle.loads(body)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
