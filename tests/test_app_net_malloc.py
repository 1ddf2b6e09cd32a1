"""The heap tuning applied at startup of `serve` and of each worker: freed memory stays in
the heap for the next request body instead of going back to the kernel."""

import os
import subprocess
import sys

import pytest

# What both probes share: mallinfo2() and malloc as ctypes reads them.
PRELUDE = """
import ctypes, sys
from proxy.heap import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
"""

# How much of 16 MiB freed at the top of the heap glibc gives back to the kernel.
PROBE = (
    PRELUDE
    + """
if sys.argv[1] == "tuned":
    assert tune_malloc()
blocks = [libc.malloc(64 << 10) for _ in range(256)]  # 16 MiB below the mmap threshold
grown = libc.mallinfo2().arena
for b in reversed(blocks):
    libc.free(b)
print(grown - libc.mallinfo2().arena)
"""
)

# How many of 64 read-sized (256 KiB) blocks glibc serves by mmap, from glibc's starting
# threshold (128 KiB; a process's earlier frees may have raised it, which made this bimodal).
PROBE_MMAP = (
    PRELUDE
    + """
libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD at its start value
if sys.argv[1] == "tuned":
    assert tune_malloc()
before = libc.mallinfo2().hblks
big = [libc.malloc(256 << 10) for _ in range(64)]
print(libc.mallinfo2().hblks - before)
"""
)


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def _returned_to_kernel(mode: str, probe: str = PROBE) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", probe, mode], cwd=root, capture_output=True, text=True,
        timeout=30, check=True,
    )  # fmt: skip
    return int(out.stdout)


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_tuned_heap_keeps_freed_memory() -> None:
    assert _returned_to_kernel("default") > 8 << 20  # glibc's default trims the top
    assert _returned_to_kernel("tuned") == 0


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_tuned_heap_serves_read_sized_blocks_without_mmap() -> None:
    """A read of up to 256 KiB must not cost an mmap and munmap (and their page faults):
    tuning the trim threshold alone pins glibc's mmap threshold at 128 KiB."""
    assert _returned_to_kernel("default", PROBE_MMAP) > 32  # the untuned start: mmapped
    assert _returned_to_kernel("tuned", PROBE_MMAP) == 0


def test_tune_gc_raises_only_the_young_threshold() -> None:
    import gc

    from proxy.heap import GC_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, before[1], before[2])
    finally:
        gc.set_threshold(*before)
