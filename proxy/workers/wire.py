"""Messages between the supervisor and its data-plane workers (`serve --workers N`).

One socketpair per worker carries length-prefixed pickles both ways. Both ends are
processes of this program started by the supervisor, so pickle is trusted here and
lets the validated Config travel as it is (no second parse, no second opinion).

supervisor -> worker: `State` whenever routing, config or active health changes.
worker -> supervisor: `Ready` once listening, then `Report` every REPORT_EVERY seconds
and once more after draining.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import struct
import time
from dataclasses import dataclass
from typing import Any

from proxy.config.schema import Config
from proxy.routing.table import Overrides
from proxy.workers.counts import Counts

REPORT_EVERY = 0.25  # seconds; the controller and /metrics lag the data plane by at most this
_HEAD = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024
# A 1,000-route Config is ~300 KiB of pickle and ~15 ms to load: off the event loop.
LOAD_IN_THREAD = 64 * 1024


# Routes per pickled part of a PackedConfig: ~0.5 ms of loading each.
ROUTES_PER_PART = 25


@dataclass(frozen=True)
class PackedConfig:
    """A Config as pickled parts: loading 1,000 routes at once holds the loop ~15-85 ms
    (a thread does not help: unpickling holds the GIL); `unpack_config` loads a few at a
    time and yields in between. `head` is the Config without its routes."""

    head: bytes
    parts: tuple[bytes, ...]


_last_packed: tuple[Config, PackedConfig] | None = None


def pack_config(config: Config) -> PackedConfig:
    """`config` in parts; the last one packed (or `remember`ed) is not packed again."""
    global _last_packed
    if _last_packed is not None and _last_packed[0] is config:
        return _last_packed[1]
    shell = copy.copy(config)
    object.__setattr__(shell, "routes", ())
    routes = config.routes
    parts = tuple(
        pickle.dumps(routes[i : i + ROUTES_PER_PART], protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(routes), ROUTES_PER_PART)
    )
    packed = PackedConfig(pickle.dumps(shell, protocol=pickle.HIGHEST_PROTOCOL), parts)
    remember(config, packed)
    return packed


def remember(config: Config, packed: PackedConfig) -> None:
    """`packed` is `config` (already at hand, e.g. from the parser process)."""
    global _last_packed
    _last_packed = (config, packed)


async def unpack_config(packed: PackedConfig, slice_s: float = 0.002) -> Config:
    """The Config, loaded a few parts at a time; the loop runs at least every `slice_s`."""
    config = pickle.loads(packed.head)
    routes: list[Any] = []
    deadline = time.perf_counter() + slice_s
    for part in packed.parts:
        routes.extend(pickle.loads(part))
        if time.perf_counter() >= deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + slice_s
    object.__setattr__(config, "routes", tuple(routes))
    return config


@dataclass(frozen=True)
class State:
    """Everything a worker needs to route: `config` is None when unchanged since the last."""

    config_id: int
    config: PackedConfig | None
    overrides: Overrides
    health: tuple[tuple[str, str, bool], ...]  # (subset, address, healthy) from active checks
    host: str
    port: int


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
