"""`python -m benchmarks.mem_probe -c FILE --out SAMPLES.jsonl [--loop uvloop|asyncio]`.

Runs the App in this process, exactly as `canaryproxy serve` builds it, but on the
chosen event loop, and appends one JSON line per sample to `--out`: RSS, the
/proc/self/smaps split ([heap], other anonymous, file-backed), glibc's mallinfo2
(bytes in use vs free inside malloc), Python's allocated block count, gc-tracked
objects and asyncio tasks; every `--types-every` seconds also the gc-tracked object
count per type (and pymalloc's arena statistics on stderr). SIGUSR1 prints pymalloc's arena statistics to stderr and runs gc.collect() + malloc_trim(0) and writes a sample tagged
"trimmed": memory that comes back then was fragmentation or free lists, not a leak.
SIGUSR2 writes a census of the cyclic garbage (gc.DEBUG_SAVEALL) with examples.
SIGTERM stops. Driven by `benchmarks/mem_soak.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from proxy.app import App

_LIBC = ctypes.CDLL("libc.so.6")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_LIBC.mallinfo2.restype = _MallInfo2


def smaps_kib() -> dict[str, int]:
    """Rss (KiB) of this process by kind of mapping."""
    out = {"heap": 0, "anon": 0, "file": 0, "anon_maps": 0}
    kind = "anon"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split(None, 1)[0]
        if "-" in first and not first.endswith(":"):
            parts = line.split()
            name = parts[5] if len(parts) > 5 else ""
            kind = "heap" if name == "[heap]" else ("file" if name.startswith("/") else "anon")
            out["anon_maps"] += kind == "anon"
        elif first == "Rss:":
            out[kind] += int(line.split()[1])
    return out


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sample(t0: float, tag: str = "") -> dict[str, Any]:
    mi = _LIBC.mallinfo2()
    return {
        "t": round(time.monotonic() - t0, 1),
        "tag": tag,
        "rss": rss_kib(),
        **smaps_kib(),
        "malloc_used": mi.uordblks // 1024,
        "malloc_free": mi.fordblks // 1024,
        "malloc_mmap": mi.hblkhd // 1024,
        "py_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
        "tasks": len(asyncio.all_tasks()),
        "gc_full": gc.get_stats()[2]["collections"],
    }


def _describe(o: object) -> str:
    if isinstance(o, dict):
        return "dict keys " + repr(list(o)[:8])[:160]
    if isinstance(o, list | tuple):
        return f"{type(o).__name__}[{len(o)}] of " + repr([type(x).__name__ for x in o[:6]])
    if hasattr(o, "__code__"):
        code = o.__code__  # type: ignore[attr-defined]
        return f"{code.co_qualname} {code.co_filename}:{code.co_firstlineno}"
    if hasattr(o, "f_code"):
        return f"frame {o.f_code.co_qualname} {o.f_code.co_filename}"  # type: ignore[attr-defined]
    return repr(o)[:160]


def type_counts() -> dict[str, int]:
    return dict(Counter(type(o).__qualname__ for o in gc.get_objects()))


class Probe:
    def __init__(self, out: Path, every: float, types_every: float) -> None:
        self.out, self.every, self.types_every = out.open("w"), every, types_every
        self.t0 = time.monotonic()

    def write(self, rec: dict[str, Any]) -> None:
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()

    async def run(self) -> None:
        next_types = 0.0
        while True:
            rec = sample(self.t0)
            if rec["t"] >= next_types:
                rec["types"] = type_counts()
                print(f"== t={rec['t']}", file=sys.stderr, flush=True)
                sys._debugmallocstats()
                next_types = rec["t"] + self.types_every
            self.write(rec)
            await asyncio.sleep(self.every)

    def garbage(self) -> None:
        """Collect with DEBUG_SAVEALL: what the cyclic garbage is made of, with examples."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        gc.set_debug(0)
        found, gc.garbage[:] = list(gc.garbage), []
        counts = Counter(type(o).__qualname__ for o in found)
        examples: dict[str, list[str]] = {}
        for o in found:
            ex = examples.setdefault(type(o).__qualname__, [])
            if len(ex) < 3:
                ex.append(_describe(o))
        top = dict(counts.most_common(15))
        self.write(
            {
                "tag": "garbage",
                "t": round(time.monotonic() - self.t0, 1),
                "types": top,
                "examples": {k: examples[k] for k in top},
                "gc_stats": gc.get_stats(),
            }
        )

    def trim(self) -> None:
        self.write(sample(self.t0, "before_trim") | {"types": type_counts()})
        sys._debugmallocstats()  # pymalloc arenas and pools, to stderr
        gc.collect()
        _LIBC.malloc_trim(0)
        self.write(sample(self.t0, "trimmed"))


def break_cycles() -> None:
    """The proposed fix, applied from outside: drop the parser when a connection is lost.

    An httptools parser holds bound methods of its protocol, and the protocol holds the
    parser, so every closed connection (with its transport and timers) is a reference
    cycle that only a full gc collection frees.
    """
    from proxy.dataplane.server import ClientConnection
    from proxy.dataplane.upconn import UpstreamConnection

    for cls in (ClientConnection, UpstreamConnection):
        lost = cls.connection_lost

        def connection_lost(self: Any, exc: Exception | None, lost: Any = lost) -> None:
            lost(self, exc)
            self.parser = None

        cls.connection_lost = connection_lost  # type: ignore[method-assign]


async def serve(args: argparse.Namespace) -> None:
    if args.break_cycles:
        break_cycles()
    app = App(args.config, args.state_dir)
    await app.start()
    probe = Probe(Path(args.out), args.every, args.types_every)
    task = asyncio.create_task(probe.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, probe.trim)
    loop.add_signal_handler(signal.SIGUSR2, probe.garbage)
    print("READY", flush=True)
    await stop.wait()
    task.cancel()
    await app.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--state-dir", default="./.canaryproxy-mem")
    p.add_argument("--out", required=True)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--every", type=float, default=5.0)
    p.add_argument("--break-cycles", action="store_true", help="see break_cycles()")
    p.add_argument("--types-every", type=float, default=30.0)
    args = p.parse_args()
    factory: Any = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()
