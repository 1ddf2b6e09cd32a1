"""Where a compiled build's CPU goes, from `perf record --call-graph dwarf` samples.

py-spy sees no compiled frames without `--native`, and with it must stop the process for
every sample (the proxy ran at a sixtieth of its speed). perf samples without stopping it;
`perf script -F ip,sym,dso` prints each sample as its stack, leaf first, one frame a line.

The report (`summarize`) gives:
- the share of samples by where the leaf is: the kernel, libpython, our compiled code,
  httptools (llhttp), uvloop (libuv), libc;
- per compiled function, the samples whose nearest compiled frame it is (its own time plus
  what it calls outside the compiled code: the kernel's sends, libpython's allocations and
  generic calls): what a change to that function can save;
- per compiled function, only the libpython part of that: the interpreter's work the compiled
  code still asks for (generic attribute and method lookups, dict lookups, allocations).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Iterator

_FRAME = re.compile(r"\s*[0-9a-f]+ (.*) \((.*)\)$")
# a compiled function of ours: mypyc names it CPyDef_<module>___<Class>___<method>
_OURS = "CPyDef_"


def samples(text: Iterable[str]) -> Iterator[list[tuple[str, str]]]:
    """Each sample's frames as (symbol, shared object), leaf first."""
    frames: list[tuple[str, str]] = []
    for line in text:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
                frames = []
            continue
        m = _FRAME.match(line)
        if m:
            frames.append((m.group(1), m.group(2)))
    if frames:
        yield frames


def where(dso: str) -> str:
    """A shared object's part of the request path."""
    if "kernel" in dso:
        return "kernel"
    if "__mypyc" in dso:
        return "compiled (ours)"
    if "libpython" in dso:
        return "libpython"
    if "httptools" in dso or "/parser." in dso:
        return "httptools (llhttp)"
    if "uvloop" in dso or "/loop." in dso:
        return "uvloop (libuv)"
    if "libc." in dso or "vdso" in dso:
        return "libc"
    return dso.rsplit("/", 1)[-1] or "unknown"


def function(symbol: str) -> str:
    """`CPyDef_server___ClientConnection___data_received` -> `server.ClientConnection.data_received`."""
    return symbol.removeprefix(_OURS).replace("___", ".")


def owner(frames: list[tuple[str, str]]) -> str | None:
    """The nearest compiled function of ours above the leaf (the leaf itself included)."""
    for symbol, dso in frames:
        if symbol.startswith(_OURS) and "__mypyc" in dso:
            return function(symbol)
    return None


def tally(
    text: Iterable[str],
) -> tuple[int, collections.Counter, collections.Counter, collections.Counter]:
    """(samples, by part, by owning compiled function, libpython leaf by owner)."""
    n = 0
    parts: collections.Counter = collections.Counter()
    owners: collections.Counter = collections.Counter()
    interp: collections.Counter = collections.Counter()
    for frames in samples(text):
        n += 1
        part = where(frames[0][1])
        parts[part] += 1
        who = owner(frames) or "(the event loop, outside our code)"
        owners[who] += 1
        if part == "libpython":
            interp[who] += 1
    return n, parts, owners, interp


def summarize(text: Iterable[str], top: int = 25) -> str:
    n, parts, owners, interp = tally(text)
    if not n:
        return "no samples"
    out = [f"{n} samples", "", "by where the leaf is:"]
    out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in parts.most_common()]
    out += ["", "by nearest compiled function (its own time and what it calls outside):"]
    out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in owners.most_common(top)]
    out += ["", "libpython work (lookups, allocations, generic calls) by the function asking:"]
    out += [f"  {100 * c / n:5.1f}%  {k}" for k, c in interp.most_common(top)]
    return "\n".join(out)
