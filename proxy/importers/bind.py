"""Upstreams the translated routes need, bound to `--endpoints` addresses.

Manifests name pods by labels (or Kubernetes Services), never by address, so each upstream
takes its addresses from `--endpoints NAME=HOST:PORT`, where NAME is the upstream's name or
one of its aliases (the bare subset `v1` when only one service is imported; `primary` /
`canary` for Flagger). An upstream may carry a default (Flagger's Service DNS names); without
one, a missing binding is fatal even with --best-effort: there is nothing to send traffic to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.importers.common import Doc, Report, Source


@dataclass
class Wanted:
    """One upstream to bind: its name, other --endpoints names for it, options."""

    name: str
    src: Source
    path: str
    aliases: tuple[str, ...] = ()
    options: Doc = field(default_factory=dict)
    default: tuple[str, ...] = ()
    default_note: str = ""
    hint: str = ""


def bind(wanted: list[Wanted], endpoints: dict[str, list[str]], report: Report) -> dict[str, Doc]:
    """{upstream name: {endpoints, **options}} in the order first wanted."""
    out: dict[str, Doc] = {}
    used: set[str] = set()
    for w in wanted:
        if w.name in out:
            continue
        key = next((k for k in (w.name, *w.aliases) if k in endpoints), None)
        if key is not None:
            used.add(key)
            addrs = list(endpoints[key])
        elif w.default:
            addrs = list(w.default)
            if w.default_note:
                report.note(w.src, w.path, w.default_note)
        else:
            hint = w.hint or f"pass --endpoints {w.name}=HOST:PORT"
            report.missing(w.src, w.path, f"{w.name}: no endpoints; {hint}")
            continue
        out[w.name] = {"endpoints": addrs, **w.options}
    for key in endpoints:
        if key not in used:
            names = ", ".join(out) or "none"
            report.notes.append(f"--endpoints: {key}: names no upstream (upstreams: {names})")
    return out
