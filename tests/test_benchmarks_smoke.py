"""`python -m benchmarks --quick` runs end to end and reports every proxy in every scenario.

Speed is not asserted (it varies with the machine); the table's shape is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import proxies, scenarios

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _expected_proxies() -> list[str]:
    return [name for name, (start, _) in proxies.available().items() if start is not None]


@pytest.mark.skipif(
    not (shutil.which("wrk") and (shutil.which("nginx") or Path("/usr/sbin/nginx").exists())),
    reason="the benchmark needs wrk and nginx (apt-get install wrk nginx)",
)
def test_quick_run_reports_a_row_per_proxy_and_scenario(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    got = {(r["proxy"], r["scenario"]) for r in result["rows"]}
    for s in scenarios.QUICK:
        assert ("direct", s) in got
        for p in _expected_proxies():
            assert (p, s) in got, f"{p} missing in {s}: notes {result['notes']}"
            assert f"| {s} | {p} |" in md
            ratio = next(r for r in result["ratios"] if r["proxy"] == p and r["scenario"] == s)
            assert ratio["rps_64_x"] is not None and ratio["rps_64_x"] > 0
    assert md.index("Ratios against nginx") < md.index("Every cell")


def test_unknown_scenario_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scenarios", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "unknown scenario" in run.stderr
    assert not (tmp_path / "results.json").exists()
