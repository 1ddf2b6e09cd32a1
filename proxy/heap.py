"""The heap of a long-running proxy: freeze what stays, keep what large bodies reuse.

The collector and the allocator both cost latency at the wrong moment: a full collection
walks every object of a large config with the loop stopped, and glibc returns freed memory
to the kernel only to fault it back in for the next large body.
"""

from __future__ import annotations

import gc


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


# The collector's generation-0 threshold for a serving process (CPython's default is 700).
GC_THRESHOLD = 20_000


def tune_gc(threshold0: int = GC_THRESHOLD) -> None:
    """Collect cycles less often in a serving process. A proxied request allocates some
    dozens of tracked objects (its exchange, header tuples and lists) and frees them by
    reference counting; with the default threshold a collection ran every few requests, and
    with hundreds of connections in flight their live state kept surviving into the older
    generations, so full collections came often and walked every connection: at 512
    connections the collector took ~3 % of the time per request. The data plane makes no
    cycles per request, so a collection every few hundred requests loses nothing."""
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold0, gen1, gen2)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_malloc(
    trim_threshold: int = 256 << 20, top_pad: int = 64 << 20, mmap_threshold: int = 1 << 20
) -> bool:
    """Keep freed heap for reuse instead of returning it to the kernel after each large
    request body: with glibc's defaults an upload pays page faults again every MiB
    (300-950 us per MiB). Same as MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ /
    MALLOC_MMAP_THRESHOLD_. Setting the first two also stops glibc's mmap threshold from
    adapting: it stays wherever start-up left it (128 KiB on some starts), and a read of up
    to 256 KiB (uvloop's buffer) would then be mmapped and unmapped, page faults included,
    every time: a tunnel of 64 KiB
    WebSocket messages paid 2.5x nginx's CPU for it. So reads stay below it. Only on glibc;
    False when not applied."""
    import ctypes
    import os

    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and ok
        return libc.mallopt(_M_TOP_PAD, top_pad) == 1 and ok
    except (OSError, ValueError, AttributeError):
        return False
