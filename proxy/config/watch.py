"""Hot reload trigger: poll the config file and its directory, fire on new CONTENT.

Why poll stat instead of inotify: it is portable, and the file may be replaced in
ways a watch on one inode misses. Kubernetes mounts a ConfigMap as
`config.yaml -> ..data/config.yaml` and `..data -> ..2026_11_26_...`; an update
swaps the `..data` symlink, so neither the file's own path nor its mtime need
change, but the directory's and the resolved target's do. Any change of the
(file, resolved file, directory) stat signature triggers a read, and `on_change`
runs only when the sha256 of the content differs from the last content seen: a
`touch`, or an editor's save of identical bytes, reloads nothing.

The reload (config.reload) parses and validates what `on_change` is given and keeps the
last good config; an exception in `on_change` is logged and the watch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.tasks import spawn

log = logging.getLogger(__name__)

Signature = tuple[tuple[float, int, int] | None, ...]


@dataclass(frozen=True, slots=True)
class FileRead:
    """The config file's text and sha256, read once; `error` when it could not be read."""

    text: str
    digest: str
    error: str | None = None


def read_config_file(path: str) -> FileRead:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        return FileRead("", "", f"{path}: cannot read: {exc.strerror}")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return FileRead(raw.decode("utf-8"), digest)
    except UnicodeDecodeError as exc:
        return FileRead("", digest, f"{path}: cannot read: {exc}")


def content_hash(path: str) -> str:
    """sha256 hex digest of the file's bytes; "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def _stat(path: str) -> tuple[float, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)


def signature(path: str) -> Signature:
    """Stat of the file (following links), of its resolved target and of its directory."""
    directory = os.path.dirname(os.path.abspath(path))
    return (_stat(path), _stat(os.path.realpath(path)), _stat(directory))


class ConfigWatcher:
    """Calls `on_change(read)` when the content of `path` changes, with the file as read
    (so the reload does not read and hash it again); polls every `interval` s."""

    def __init__(
        self, path: str, on_change: Callable[[FileRead], Awaitable[object]], interval: float = 1.0
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._signature: Signature = signature(path)
        self._hash = content_hash(path)

    def mark_loaded(self, digest: str | None = None) -> None:
        """Take the current content (whose sha256 is `digest`, when the caller has just
        read it) as seen, e.g. after a reload by SIGHUP or the API."""
        self._signature = signature(self.path)
        self._hash = digest if digest is not None else content_hash(self.path)

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), f"config-watch:{self.path}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> bool:
        """One poll: True if the content changed and `on_change` was called."""
        sig = signature(self.path)
        if sig == self._signature:
            return False
        self._signature = sig
        read = await asyncio.to_thread(read_config_file, self.path)
        if read.digest == self._hash or not read.digest:
            return False  # unchanged bytes, or mid-swap: the next change retries
        self._hash = read.digest
        await self.on_change(read)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a failing reload must not end the watch
                log.exception("config reload after a change of %s failed", self.path)
