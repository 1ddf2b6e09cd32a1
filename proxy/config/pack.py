"""A validated Config as pickled parts, for the two places it crosses a process boundary:
the parser process hands a large reload to the App, and the supervisor sends the running
config to its workers (proxy.workers.wire). Both load it a slice at a time, and the parts
packed once are kept, so a config pickled by the parser is not pickled again for workers.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
import time
from dataclasses import dataclass
from typing import Any

from proxy.config.schema import Config

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
