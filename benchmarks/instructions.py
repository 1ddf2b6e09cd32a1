"""`python -m benchmarks.instructions [--requests 2000] [--src DIR ...] [--no-nginx]`.

User-space instructions per proxied request, counted by valgrind's callgrind: ours (the
installed tree, or each `--src` tree, compiled or pure as it is) and nginx, the same small
GET through the same 95/5 split to the benchmark's nginx upstream pair.

On a shared VM, time per request moves ±10-20 % between runs; an instruction count moves
well under 1 %, so it tells whether a change to the hot path helped. It counts user space
only: the kernel's part (the socket sends and reads, about half of a small request's CPU
here, the same for nginx) is not in it, and callgrind runs the process ~50x slower, so
timers and timeouts see another world. Counting starts after 20 warm-up rounds and covers
exactly the measured requests (`callgrind_control -i on/off`).

Needs `valgrind` (Debian package) and nginx; a tree's own `.so` files decide its build.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import configs, procs, proxies, scenarios

CONNECTIONS = 8  # requests go out one per connection per round, all answered before the next
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\nAccept: */*\r\n\r\n"


def _rounds(conns: list[socket.socket], n: int) -> None:
    for _ in range(n):
        for c in conns:
            c.sendall(REQUEST)
        for c in conns:
            got = b""
            while b"\r\n\r\nok" not in got:
                chunk = c.recv(65536)
                if not chunk:
                    raise RuntimeError("the proxy closed a connection")
                got += chunk


def _count(cmd: list[str], port: int, d: Path, requests: int, **popen: object) -> float:
    """Run `cmd` under callgrind, send `requests` through `port`, return instructions each."""
    out = d / "callgrind.out"
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    with open(d / "valgrind.err", "w") as err:
        proc = subprocess.Popen(vg + cmd, stdout=subprocess.DEVNULL, stderr=err, **popen)  # type: ignore[call-overload]
    try:
        procs.wait_port(port, proc, timeout=600)
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
        _rounds(conns, 20)  # warm-up: imports, caches, pooled upstream connections
        rounds = max(1, requests // CONNECTIONS)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
        _rounds(conns, rounds)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
        time.sleep(1)
        for c in conns:
            c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    total = 0
    for f in d.glob("callgrind.out*"):
        for line in f.read_text().splitlines():
            if line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
    if not total:
        raise RuntimeError(f"no counts: {(d / 'valgrind.err').read_text()[-400:]}")
    return total / (rounds * CONNECTIONS)


def ours(src: Path, up: tuple[int, int], d: Path, requests: int) -> float:
    s = scenarios.by_name(("small",))[0]
    port, admin = procs.free_port(), procs.free_port()
    conf = configs.write_yaml(d / "ours.yaml", configs.ours_dict(port, admin, up, s, None))
    cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(conf), "--state-dir", str(d / "st")]
    env = dict(os.environ, PYTHONPATH=str(src))
    return _count(cmd, port, d, requests, cwd=str(src), env=env)


def nginx(up: tuple[int, int], d: Path, requests: int) -> float:
    s = scenarios.by_name(("small",))[0]
    port = procs.free_port()
    conf = configs.nginx_proxy(d, port, up, s)
    binary = str(procs.have("nginx"))
    cmd = [binary, "-p", str(d), "-c", str(conf), "-g", "daemon off; master_process off;"]
    return _count(cmd, port, d, requests)


def build_of(src: Path) -> str:
    code = "from proxy.build import build; print(build())"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--src", type=Path, action="append", help="a source tree (repeatable)")
    p.add_argument("--no-nginx", action="store_true")
    a = p.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not procs.have(tool):
            print(f"{tool} not found (apt-get install valgrind nginx)", file=sys.stderr)
            return 1
    procs.install_cleanup()
    trees = a.src or [proxies.REPO]
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="canaryproxy-instr-") as tmp:
        d = Path(tmp)
        up_proc, up = proxies.start_upstreams(d)
        try:
            for i, src in enumerate(trees):
                (d / str(i)).mkdir()
                label = f"ours, {build_of(src)} ({src})"
                rows.append((label, ours(src.resolve(), up, d / str(i), a.requests)))
            if not a.no_nginx:
                (d / "nginx").mkdir()
                rows.append(("nginx", nginx(up, d / "nginx", a.requests)))
        finally:
            procs.stop(up_proc)
    base = rows[-1][1] if not a.no_nginx else 0.0
    print(f"user-space instructions per small GET ({a.requests} requests, callgrind)")
    for label, n in rows:
        ratio = f"  {n / base:.2f}x nginx" if base else ""
        print(f"  {n:>10,.0f}  {label}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
