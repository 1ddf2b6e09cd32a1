"""canaryproxy's build: the data plane's hot path compiled with mypyc when it can be.

`pip install .` compiles the modules in HOT (the Python sources stay the one source of truth;
mypyc turns their annotations into C) when a C compiler, the Python headers and mypy are
present, and builds pure Python otherwise, saying which and why. `CANARYPROXY_PURE=1`
forces pure Python; a pure editable build also removes compiled modules an earlier one left
in the tree (they would be imported instead of the sources). `canaryproxy --version` and
the status say which build runs (proxy/build.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig

from setuptools import setup

HOT = [  # what the profile of a small request earns (benchmarks/README.md)
    "proxy/dataplane/server.py",
    "proxy/dataplane/parse.py",
    "proxy/dataplane/request.py",
    "proxy/dataplane/exchange.py",
    "proxy/dataplane/actions.py",
    "proxy/dataplane/stream.py",
    "proxy/dataplane/rules.py",
    "proxy/dataplane/heads.py",
    "proxy/dataplane/timers.py",
    "proxy/dataplane/clientio.py",
    "proxy/dataplane/listening.py",
    "proxy/dataplane/upconn.py",
    "proxy/dataplane/mirror.py",
    "proxy/dataplane/fields.py",
    "proxy/dataplane/upstream.py",
    "proxy/dataplane/errors.py",
    "proxy/headers.py",
    "proxy/metrics.py",
    "proxy/metrics_counters.py",
    "proxy/routing/table.py",
    "proxy/routing/route.py",
    "proxy/routing/match.py",
    "proxy/routing/split.py",
    "proxy/routing/scan.py",
]


def why_pure() -> str | None:
    """Why this build cannot (or must not) compile; None when it can."""
    if os.environ.get("CANARYPROXY_PURE", "") not in ("", "0"):
        return "CANARYPROXY_PURE is set"
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if not shutil.which(compiler.split()[0]):
        return f"no C compiler ({compiler.split()[0]} not found)"
    include = sysconfig.get_paths().get("include", "")
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers (no Python.h in {include})"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypy (which brings mypyc) is not installed"
    return None


def ext_modules() -> list:
    why = why_pure()
    if why is not None:
        print(f"canaryproxy: building pure Python: {why}", file=sys.stderr)
        for stale in glob.glob("proxy/**/*.so", recursive=True) + glob.glob("*__mypyc*.so"):
            os.remove(stale)  # an earlier compiled editable build's modules
        return []
    from mypyc.build import mypycify

    print(f"canaryproxy: compiling {len(HOT)} hot-path modules with mypyc", file=sys.stderr)
    return mypycify(HOT, opt_level="3", debug_level="0")


setup(ext_modules=ext_modules())
