"""Helpers shared by the App and the workers: listen addresses (parse, check, bind;
startup problems become a StartupError) and stepwise routing-table builds.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import multiprocessing
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from proxy.config.load import load_text
from proxy.config.schema import Config
from proxy.routing.table import BuildCache, Overrides, RoutingTable, iter_build_table
from proxy.workers.wire import PackedConfig, pack_config, remember, unpack_config

# A build yields the loop after this much work: requests wait at most about this long.
BUILD_SLICE = 0.002


class StartupError(Exception):
    """The proxy cannot start; the message says why. `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def split_listen(listen: str) -> tuple[str, int]:
    """`0.0.0.0:8080`, `[::1]:9901` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(listen: str, reuse_port: bool = False) -> socket.socket:
    """A listening socket; `reuse_port` lets every worker of `serve --workers` bind it too."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def check_free(listen: str) -> tuple[str, int]:
    """(host, port) after proving the address can be bound; port 0 becomes a free port.

    Workers then bind it themselves with SO_REUSEPORT. The socket is closed first: a bound
    socket in the reuse-port group that does not accept would swallow connections.
    """
    host, _ = split_listen(listen)
    sock = bind(listen)
    port = sock.getsockname()[1]
    sock.close()
    return host, port


async def build_table_stepwise(
    config: Config, overrides: Overrides, cache: BuildCache, slice_s: float = BUILD_SLICE
) -> RoutingTable:
    """`build_table` that hands the loop back every `slice_s` seconds of work.

    A cold 1,000-route build takes a few hundred ms; run inline it would stall every
    request for that long, and in a thread the GIL (regex compiles hold it) still does.
    Raises ValueError like build_table. The caller swaps the result in.
    """
    steps = iter_build_table(config, overrides, cache)
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


def settle_heap() -> None:
    """Once the startup config is in place: collect, then freeze what is alive.

    A 1,000-route config with its table and the libraries is ~100,000 objects; a full cycle
    collection walks all of them with the loop stopped (70-100 ms here) and one is due every
    so often. Frozen objects are skipped by the collector but still freed by reference
    counting when dropped (routing tables break their one cycle: routing.table.retire).
    After a reload, `keep_config` (no collection: it would stall the loop just the same).
    """
    gc.collect()
    gc.freeze()


def keep_config() -> None:
    """A new config is in place: freeze it (and whatever else is alive) so the collector
    does not walk its ~50,000 objects again and again (a full collection after a 1,000-route
    reload stalled the loop 30-130 ms). Safe because loading leaves no cyclic garbage
    (config.load disposes the YAML loader) and replaced tables break their one cycle
    (routing.table.retire); frozen objects are still freed by reference counting."""
    gc.freeze()


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2


def tune_malloc(trim_threshold: int = 256 << 20, top_pad: int = 64 << 20) -> bool:
    """Keep freed heap for reuse instead of returning it to the kernel after each large
    request body: with glibc's defaults an upload pays page faults again every MiB
    (300-950 us per MiB). Same as MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_. Only on glibc;
    False when not applied."""
    import ctypes
    import os

    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        return libc.mallopt(_M_TOP_PAD, top_pad) == 1 and ok
    except (OSError, ValueError, AttributeError):
        return False


# Larger texts are parsed in a process of their own: libyaml holds the GIL ~100 ms for a
# 1,000-route file, so a thread would stall the event loop just the same.
PARSE_APART = 64 * 1024


def _load_packed(text: str, filename: str) -> tuple[PackedConfig | None, list[str]]:
    config, errors = load_text(text, filename)
    return (pack_config(config) if config is not None else None), errors


class ConfigParser:
    """Parses config text off the event loop: small texts in a thread, large ones in a
    parser process (started at the first large file, kept for the next), whose result
    arrives in parts loaded a slice at a time (worker_wire.unpack_config)."""

    def __init__(self, apart: int = PARSE_APART) -> None:
        self.apart = apart
        self._pool: ProcessPoolExecutor | None = None

    async def load(self, text: str, filename: str) -> tuple[Config | None, list[str]]:
        if len(text) < self.apart:
            return await asyncio.to_thread(load_text, text, filename)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            packed, errors = await loop.run_in_executor(self._pool, _load_packed, text, filename)
        except BrokenProcessPool:  # the parser died (killed?): parse here, start anew next time
            self.close()
            return await asyncio.to_thread(load_text, text, filename)
        if packed is None:
            return None, errors
        config = await unpack_config(packed)
        remember(config, packed)  # workers get the same parts: no second pickling
        return config, errors

    def close(self) -> None:
        """Stop the parser process (waits for it to exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
