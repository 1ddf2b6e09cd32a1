"""Which build runs: the compiled hot path (mypyc) or pure Python, as built (setup.py).

scripts/test says which build it expects, decided apart from the build itself (a C compiler
present and CANARYPROXY_PURE unset: compiled), so a compiled build that silently fell back
to pure Python, or stale compiled modules in a pure tree, fail here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from proxy.build import build, compiled_modules

EXPECTED = os.environ.get("CANARYPROXY_EXPECT_BUILD", "")


@pytest.mark.skipif(not EXPECTED, reason="scripts/test sets CANARYPROXY_EXPECT_BUILD")
def test_the_loaded_build_is_the_one_built() -> None:
    assert build() == EXPECTED
    if EXPECTED == "compiled":  # the whole hot path, not one module of it
        assert len(compiled_modules()) == 4
    else:
        assert compiled_modules() == []


def test_version_and_status_say_which_build_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"], capture_output=True, text=True, check=True
    ).stdout
    said = "compiled with mypyc" if build() == "compiled" else "pure Python"
    assert out.startswith("canaryproxy ") and said in out
