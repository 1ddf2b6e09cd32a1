"""Which build runs: the hot path compiled with mypyc, or pure Python (see setup.py)."""

from __future__ import annotations

import importlib

PROBE = "proxy.dataplane.server"  # compiled in every compiled build


def compiled_modules() -> list[str]:
    """The hot-path modules loaded from a compiled extension, by name."""
    names = [PROBE, "proxy.dataplane.exchange", "proxy.routing.table", "proxy.headers"]
    out = []
    for name in names:
        module = importlib.import_module(name)
        if str(getattr(module, "__file__", "")).endswith((".so", ".pyd")):
            out.append(name)
    return out


def build() -> str:
    """ "compiled" (mypyc) or "pure"."""
    return "compiled" if PROBE in compiled_modules() else "pure"


def describe() -> str:
    return "compiled with mypyc" if build() == "compiled" else "pure Python"
