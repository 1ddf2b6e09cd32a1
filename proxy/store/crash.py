"""Deterministic crash points for the fleet test suite: `CANARYPROXY_CRASH_AT=POINT:N` makes
the process kill itself with SIGKILL the Nth time it reaches POINT (`before-step`,
`after-step`, `after-webhook`).

Kept out of production paths: the variable is read once, at import; unset (as in any real
deployment) `POINTS` is empty and `at()` is one dict lookup that returns. Nothing else reads
it, and no config key, flag or API reaches it.
"""

from __future__ import annotations

import os
import signal


def _points(spec: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, n = part.partition(":")
        out[point] = int(n or 1)
    return out


POINTS = _points(os.environ.get("CANARYPROXY_CRASH_AT", ""))


def at(point: str) -> None:
    left = POINTS.get(point)
    if left is None:
        return
    if left <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    POINTS[point] = left - 1
