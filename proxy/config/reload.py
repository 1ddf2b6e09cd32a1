"""A reload, start to end: read and hash the file once, skip content already known,
parse off the event loop, prepare (precompile) once, hand the result to the injected
`commit`, and keep the last good config whenever anything fails.

Who reloads: the file watcher (with the bytes it has just read), SIGHUP and
`POST /api/v1/reload`. Reloads are serialised. A file that was rejected stays rejected
(answered from memory, not parsed again) until its content changes; a file back to the
running content clears the last error.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from proxy.config.load import load_text
from proxy.config.pack import PackedConfig, pack_config, remember, unpack_config
from proxy.config.schema import Config
from proxy.config.watch import ConfigWatcher, FileRead, read_config_file
from proxy.heap import keep_config

log = logging.getLogger("canaryproxy")

# Larger texts are parsed in a process of their own: libyaml holds the GIL ~100 ms for a
# 1,000-route file, so a thread would stall the event loop just the same.
PARSE_APART = 64 * 1024


def _load_packed(text: str, filename: str) -> tuple[PackedConfig | None, list[str]]:
    config, errors = load_text(text, filename)
    return (pack_config(config) if config is not None else None), errors


class ConfigParser:
    """Parses config text off the event loop: small texts in a thread, large ones in a
    parser process (started at the first large file, kept for the next), whose result
    arrives in parts loaded a slice at a time (config.pack.unpack_config)."""

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


# prepare(config) -> what commit needs (compiled routes); raises ValueError on a config
# that validates but cannot be built. commit(config, prepared or None) -> the revision.
Prepare = Callable[[Config], Awaitable[Any]]
Commit = Callable[[Config, Any], int]


class Reloader:
    """Reloads the file at `path` into whatever `commit` swaps in."""

    def __init__(
        self,
        path: str,
        prepare: Prepare,
        commit: Commit,
        counted: Callable[[str], None] = lambda result: None,
        head: Callable[[], int] = lambda: 0,
    ) -> None:
        """`counted("ok" | "rejected")` after each reload of new content; `head()` is the
        revision an unchanged file answers with."""
        self.path = path
        self.prepare, self.commit, self.counted, self.head = prepare, commit, counted, head
        self.parser = ConfigParser()
        self.last_error: str | None = None
        self.watcher: Any = None  # a ConfigWatcher once `watch` started one
        # fleet mode: a valid new file goes to the store (text, config) -> revision, and is
        # applied from there like any other replica's change; None: committed here
        self.publish: Callable[[str, Config], Awaitable[int]] | None = None
        self._lock = asyncio.Lock()
        self._running = self._rejected = ""  # digests of the running and the rejected file

    def first(self) -> tuple[Config | None, list[str]]:
        """The config to start with (parsed inline), or the errors that prevent it."""
        read = read_config_file(self.path)
        if read.error:
            return None, [read.error]
        config, errors = load_text(read.text, self.path)
        if config is not None and not errors:
            self._running = read.digest
        return config, errors

    def reload(self) -> dict:
        """Synchronous: a large config parses and compiles inline. The server uses
        `reload_async` (and fleet mode only that: publishing waits on the store)."""
        if self.publish is not None:
            raise RuntimeError("fleet mode reloads with reload_async")
        read = read_config_file(self.path)
        known = self._known(read.digest)
        if known is not None:
            return known
        config, errors = (None, [read.error]) if read.error else load_text(read.text, self.path)
        return self._finish(config, errors, read.digest, None)

    async def reload_async(self, read: FileRead | None = None) -> dict:
        """`reload` that keeps serving: parse in a thread (or the parser process), compile
        the routes a slice at a time, then commit at once. `read` is the file as the watcher
        has just read it; a weight change made meanwhile is kept (commit builds from the
        routing state current at that moment)."""
        async with self._lock:
            if read is None:
                read = await asyncio.to_thread(read_config_file, self.path)
            known = self._known(read.digest)
            if known is not None:
                return known
            if read.error:
                return self._finish(None, [read.error], read.digest, None)
            config, errors = await self.parser.load(read.text, self.path)
            if config is not None and not errors and self.publish is not None:
                return await self._publish(read.text, config, read.digest)
            prepared = None
            if config is not None and not errors:
                try:
                    prepared = await self.prepare(config)
                except ValueError as exc:
                    errors = [f"{self.path}: {exc}"]
            return self._finish(config, errors, read.digest, prepared)

    def _known(self, digest: str) -> dict | None:
        """The answer for content already running or rejected, or None when it is new."""
        if self.watcher is not None and digest:
            self.watcher.mark_loaded(digest)  # the watcher need not fire for this content
        if not digest or digest not in (self._running, self._rejected):
            return None
        if digest == self._rejected and self.last_error:
            return {"result": "rejected", "error": self.last_error}
        if self.last_error:  # the file is back to the running content: valid
            log.info("config file is the running config again; last reload error cleared")
            self.last_error, self._rejected = None, ""
        return {"result": "unchanged", "revision": self.head()}

    def _finish(self, config: Config | None, errors: list[str], digest: str, prepared: Any) -> dict:
        if config is not None and not errors:
            try:
                revision = self.commit(config, prepared)
            except ValueError as exc:
                errors = [f"{self.path}: {exc}"]
        if errors or config is None:
            return self._reject(errors, digest)
        self.counted("ok")
        keep_config()
        self.last_error, self._running = None, digest
        log.info("config reloaded: revision %d", revision)
        return {"result": "ok", "revision": revision}

    async def _publish(self, text: str, config: Config, digest: str) -> dict:
        assert self.publish is not None
        try:
            revision = await self.publish(text, config)
        except Exception as exc:  # StoreDown, Conflict, a table that cannot be built
            return self._reject([f"{self.path}: not published to the fleet: {exc}"], "")
        self.counted("ok")
        self.last_error, self._running = None, digest
        log.info("config published to the fleet: revision %d", revision)
        return {"result": "ok", "revision": revision}

    def _reject(self, errors: list[str], digest: str) -> dict:
        for line in errors:
            log.error("config rejected: %s", line)
        self.counted("rejected")
        self._rejected = digest
        self.last_error = "; ".join(errors)
        return {"result": "rejected", "error": self.last_error, "errors": errors}

    # -- the watcher -----------------------------------------------------------------

    def watch(self, interval: float) -> None:
        """Reload whenever the file's content changes (polled every `interval` s)."""
        self.watcher = ConfigWatcher(self.path, self.reload_async, interval)
        self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        await asyncio.to_thread(self.parser.close)
