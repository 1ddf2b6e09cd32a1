"""The programs under test and the upstream pair: how to find, configure and start each.

Pinning: the proxy alone on CPU 0; the upstream pair and wrk share CPU 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import configs, procs
from benchmarks.scenarios import Scenario

PROXY_CPU = 0
LOAD_CPU = 1
REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"  # admin token for our proxy (reloads in reload_stall)

Proc = subprocess.Popen[bytes]


@dataclass(frozen=True)
class Running:
    proc: Proc
    port: int
    admin_port: int = 0


Starter = Callable[[Path, tuple[int, int], Scenario], Running]


def start_upstreams(d: Path) -> tuple[Proc, tuple[int, int]]:
    """nginx answering on two ports: subset v1 and subset v2 (one worker, CPU 1)."""
    nginx = procs.have("nginx")
    if not nginx:
        raise RuntimeError("nginx is needed for the upstream pair (apt-get install nginx)")
    d.chmod(0o755)  # started by root, nginx workers run as nobody: they must read www/64k
    ports = (procs.free_port(), procs.free_port())
    conf = configs.upstream_nginx(d, ports)
    proc = procs.start(
        [nginx, "-p", str(d), "-c", str(conf), "-g", "daemon off;"], LOAD_CPU, d / "upstream.out"
    )
    for p in ports:
        procs.wait_port(p, proc)
    return proc, ports


def start_ws_upstreams(d: Path) -> tuple[Proc, tuple[int, int]]:
    """The WebSocket echo upstream on two ports, v1 and v2 (one process, CPU 1)."""
    ports = (procs.free_port(), procs.free_port())
    cmd = [sys.executable, "-m", "benchmarks.ws_upstream", "--ports", f"{ports[0]},{ports[1]}"]
    proc = procs.start(cmd, LOAD_CPU, d / "ws-upstream.out", cwd=REPO)
    for p in ports:
        procs.wait_port(p, proc)
    return proc, ports


def start_nginx(d: Path, up: tuple[int, int], s: Scenario) -> Running:
    port = procs.free_port()
    conf = configs.nginx_proxy(d, port, up, s)
    cmd = [str(procs.have("nginx")), "-p", str(d), "-c", str(conf), "-g", "daemon off;"]
    proc = procs.start(cmd, PROXY_CPU, d / "nginx.out")
    procs.wait_port(port, proc)
    return Running(proc, port)


def start_haproxy(d: Path, up: tuple[int, int], s: Scenario) -> Running:
    port = procs.free_port()
    conf = configs.haproxy(d, port, up, s)
    log = d / "haproxy-access.log" if s.access_log else d / "haproxy.out"
    proc = procs.start([str(procs.have("haproxy")), "-db", "-f", str(conf)], PROXY_CPU, log)
    procs.wait_port(port, proc)
    return Running(proc, port)


def ours_src() -> Path:
    """Source tree of our proxy: this checkout, or $BENCH_OURS_SRC (e.g. an exported older
    commit, `git archive REV proxy | tar -x -C DIR`) to compare two versions."""
    return Path(os.environ.get("BENCH_OURS_SRC") or REPO)


def ours_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ours_src()) + os.pathsep + env.get("PYTHONPATH", "")
    env["CANARYPROXY_TOKEN"] = TOKEN
    return env


def start_ours_config(
    d: Path, conf: Path, port: int, admin: int, extra: tuple[str, ...] = ()
) -> Running:
    """`python -m proxy serve -c conf [extra]` on CPU 0, waiting for both its ports."""
    cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(conf), "--state-dir", str(d / "state")]
    cmd += extra
    proc = procs.start(cmd, PROXY_CPU, d / "ours.out", env=ours_env(), cwd=ours_src())
    procs.wait_port(port, proc, timeout=30)
    procs.wait_port(admin, proc, timeout=30)
    return Running(proc, port, admin)


def start_ours(d: Path, up: tuple[int, int], s: Scenario, extra: tuple[str, ...] = ()) -> Running:
    port, admin = procs.free_port(), procs.free_port()
    data = configs.ours_dict(port, admin, up, s, d / "ours-access.log", tls_dir=d)
    conf = configs.write_yaml(d / "ours.yaml", data)
    return start_ours_config(d, conf, port, admin, extra)


def available() -> dict[str, tuple[Starter | None, str]]:
    """name -> (starter, note); starter None means skipped, with the note saying why."""
    out: dict[str, tuple[Starter | None, str]] = {}
    out["nginx"] = (start_nginx, "") if procs.have("nginx") else (None, "nginx not installed")
    out["haproxy"] = (
        (start_haproxy, "") if procs.have("haproxy") else (None, "haproxy not installed")
    )
    src = ours_src() / "proxy"
    has_ours = (src / "dataplane" / "server.py").exists() or (src / "server.py").exists()
    out["ours"] = (start_ours, "") if has_ours else (None, "proxy/server.py not present yet")
    return out
