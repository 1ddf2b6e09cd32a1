"""ConfigWatcher: real files in tmp_path; the callback fires on new content only."""

import asyncio
import os
import pathlib
from collections.abc import Callable

from proxy.config.watch import ConfigWatcher, content_hash


class Calls:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    async def __call__(self, read: object = None) -> None:
        self.count += 1
        self.event.set()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def _bump_mtime(path: pathlib.Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_content_hash(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    assert content_hash(str(f)) == content_hash(str(f))
    before = content_hash(str(f))
    f.write_text("a: 2\n")
    assert content_hash(str(f)) != before
    assert content_hash(str(tmp_path / "missing")) == ""


async def test_changed_content_calls_back(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    calls = Calls()
    watcher = ConfigWatcher(str(f), calls)
    assert not await watcher.check()
    f.write_text("a: 22\n")
    assert await watcher.check()
    assert calls.count == 1
    assert not await watcher.check()  # nothing new since
    assert calls.count == 1


async def test_touch_without_change_does_not_call_back(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    calls = Calls()
    watcher = ConfigWatcher(str(f), calls)
    _bump_mtime(f)
    f.write_text("a: 1\n")  # an editor saving identical bytes
    _bump_mtime(f)
    assert not await watcher.check()
    assert calls.count == 0


async def test_configmap_symlink_swap_calls_back(tmp_path: pathlib.Path) -> None:
    # The layout kubelet writes: config.yaml -> ..data/config.yaml, ..data -> ..v1
    for version, body in (("..v1", "a: 1\n"), ("..v2", "a: 2\n")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "config.yaml").write_text(body)
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    calls = Calls()
    watcher = ConfigWatcher(str(tmp_path / "config.yaml"), calls)
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap
    assert await watcher.check()
    assert calls.count == 1
    assert (tmp_path / "config.yaml").read_text() == "a: 2\n"


async def test_mark_loaded_skips_content_already_taken(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    calls = Calls()
    watcher = ConfigWatcher(str(f), calls)
    f.write_text("a: 333\n")
    watcher.mark_loaded()  # e.g. SIGHUP already reloaded it
    assert not await watcher.check()
    assert calls.count == 0


async def test_started_watcher_polls_until_stopped(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    calls = Calls()
    watcher = ConfigWatcher(str(f), calls, interval=0.01)
    watcher.start()
    try:
        f.write_text("a: 4444\n")
        await asyncio.wait_for(calls.event.wait(), timeout=5)
    finally:
        await watcher.stop()
    assert calls.count == 1


async def test_failing_callback_does_not_end_the_watch(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: 1\n")
    seen = asyncio.Event()
    count = 0

    async def flaky(read: object = None) -> None:
        nonlocal count
        count += 1
        if count == 1:
            raise RuntimeError("reload failed")
        seen.set()

    watcher = ConfigWatcher(str(f), flaky, interval=0.01)
    watcher.start()
    try:
        f.write_text("a: 22\n")
        await asyncio.wait_for(_until(lambda: count > 0), timeout=5)
        f.write_text("a: 333\n")
        await asyncio.wait_for(seen.wait(), timeout=5)
    finally:
        await watcher.stop()
    assert count == 2
