"""`python -m benchmarks --quick` runs end to end and reports every proxy in every scenario.

Speed is not asserted (it varies with the machine); the table's shape is. The fast tests
check the parts the figures rest on: wrk output parsing, the ratio arithmetic, and that every
generated config is accepted by the program it is for.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import configs, proxies, report, scenarios, wrk, ws_load, ws_upstream
from proxy.config.validate import validate

ROOT = Path(__file__).resolve().parent.parent

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)


def _expected_proxies() -> list[str]:
    return [name for name, (start, _) in proxies.available().items() if start is not None]


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("wrk") and NGINX),
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


@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("wrk") and NGINX),
    reason="the benchmark needs wrk and nginx (apt-get install wrk nginx)",
)
def test_websocket_scenario_reports_bytes_per_proxy_and_tunnel_count(tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["--scenarios", "websocket", "--connections", "1,4", "--runs", "1", "--duration", "1"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    cells = {(r["proxy"], r["conns"]): r for r in result["websocket"]}
    for p in ["direct", *_expected_proxies()]:
        for conns in (1, 4):
            assert cells[(p, conns)]["mb_per_s"] > 0, f"{p}@{conns}: notes {result['notes']}"
    for row in result["rows"]:
        for c in row["cells"]:
            assert c["socket_errors"] == 0, (row["proxy"], c)
    assert "## WebSocket, same run" in (out / "results.md").read_text()


def test_websocket_accept_key_is_the_rfc_6455_example() -> None:
    assert ws_load.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [64, 125, 126, 65535, 65536])
def test_websocket_frames_are_read_back_at_their_length(size: int) -> None:
    frame = ws_load.client_frame(size)
    assert ws_upstream.client_frame_len(frame[:14]) == len(frame)
    assert ws_upstream.client_frame_len(frame[:1]) is None
    assert ws_upstream.payload_size(frame) == size
    assert frame[1] & 0x80  # clients mask
    answer = ws_upstream.answer_for(size)
    assert answer[:1] == b"\x82" and not answer[1] & 0x80
    assert len(answer) - size == len(ws_load.frame_header(size, False))


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


WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Latency Distribution
     50%    1.00ms
  30000 requests in 1.00s, 4.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  30000.00
BENCH requests=30000 duration_us=1500000 p50=1000 p99=2500 p999=9000 max=12000 connect=0 read=3 write=0 status=7 timeout=1
"""


def test_wrk_output_is_parsed_from_the_done_hook_line() -> None:
    r = wrk.parse(WRK_OUTPUT)
    assert (r.requests, r.seconds, r.rps) == (30000, 1.5, 20000.0)
    assert (r.p50_ms, r.p99_ms, r.p999_ms, r.max_ms) == (1.0, 2.5, 9.0, 12.0)
    assert r.non_2xx == 7
    assert r.errors == {"read": 3, "timeout": 1}


def test_wrk_output_without_result_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no BENCH line"):
        wrk.parse("unable to connect to 127.0.0.1:1 Connection refused")


def _row(proxy: str, cells: dict[int, tuple[float, float, float]]) -> dict:
    return {
        "proxy": proxy,
        "scenario": "small",
        "peak_rss_mb": 10.0,
        "cells": [
            {"conns": c, "rps": rps, "p50_ms": p50, "p99_ms": p50 * 2, "cpu_s_per_10k": cpu}
            for c, (rps, p50, cpu) in cells.items()
        ],
    }


def test_ratios_are_against_nginx_and_latency_is_added_over_direct() -> None:
    rows = [
        _row("direct", {1: (50000, 0.02, 0.0)}),
        _row("nginx", {1: (8000, 0.10, 0.5), 64: (40000, 1.0, 0.2)}),
        _row("ours", {1: (6000, 0.18, 0.9), 64: (20000, 3.0, 0.5)}),
    ]
    ours = next(r for r in report.ratios(rows) if r["proxy"] == "ours")
    assert ours["rps_64_x"] == 0.5
    assert ours["cpu_x"] == 2.5
    assert ours["added_p50_ms"] == 0.16
    assert ours["added_p50_x"] == 2.0  # 0.16 added against nginx's 0.08
    assert ours["rps_256_x"] is None  # not measured: no figure, not a zero
    assert [r["proxy"] for r in report.ratios(rows)] == ["nginx", "ours"]


@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_our_config_for_every_scenario_is_valid(s: scenarios.Scenario, tmp_path: Path) -> None:
    config, errors = validate(configs.ours_dict(8080, 9901, (9001, 9002), s, tmp_path / "a.log"))
    assert errors == [] and config is not None
    assert [r.name for r in config.routes][-1] == "default"


@pytest.mark.skipif(NGINX is None, reason="nginx not installed")
@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_nginx_accepts_every_generated_config(s: scenarios.Scenario, tmp_path: Path) -> None:
    for conf in (
        configs.nginx_proxy(tmp_path, 8080, (9001, 9002), s),
        configs.upstream_nginx(tmp_path, (9001, 9002)),
    ):
        check = [str(NGINX), "-t", "-p", str(tmp_path), "-c", str(conf)]
        r = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed")
@pytest.mark.parametrize("s", scenarios.SCENARIOS, ids=lambda s: s.name)
def test_haproxy_accepts_every_generated_config(s: scenarios.Scenario, tmp_path: Path) -> None:
    conf = configs.haproxy(tmp_path, 8080, (9001, 9002), s)
    r = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
