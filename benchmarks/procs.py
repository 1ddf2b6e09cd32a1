"""Processes the benchmark starts: pinned with taskset, measured from /proc, stopped by PID.

Every process started here is remembered until it is stopped, so `stop_all` (run at exit,
on SIGINT and on SIGTERM) leaves nothing behind even when a run is interrupted.
"""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
Proc = subprocess.Popen[bytes]
_started: dict[int, Proc] = {}


def have(program: str) -> str | None:
    """Full path of `program` on PATH or in /usr/sbin (nginx, haproxy live there), or None."""
    found = shutil.which(program)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin"):
        if os.access(f"{d}/{program}", os.X_OK):
            return f"{d}/{program}"
    return None


def raise_nofile() -> int:
    """Lift the soft open-file limit to the hard one; children inherit it (10k-connection runs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """`cmd` under `taskset -c cpu` when taskset exists and the machine has that CPU."""
    if cpu is None or not shutil.which("taskset") or cpu >= (os.cpu_count() or 1):
        return list(cmd)
    return ["taskset", "-c", str(cpu), *cmd]


def start(
    cmd: Sequence[str],
    cpu: int | None,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `cmd` pinned to `cpu`, output to `log`, in its own session (Ctrl-C stays with us)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            pinned(cmd, cpu),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    _started[proc.pid] = proc
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process (nginx and HAProxy masters stop their workers), then SIGKILL."""
    _started.pop(proc.pid, None)
    if proc.poll() is not None:
        return
    children = tree(proc.pid)[1:]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    for pid in children:  # workers that outlived their master
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_all() -> None:
    for proc in list(_started.values()):
        stop(proc)


def install_cleanup() -> None:
    """Stop every started process at exit and on SIGINT/SIGTERM."""
    atexit.register(stop_all)

    def _on_signal(signum: int, _frame: object) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (nginx/HAProxy workers, taskset's exec'd child)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree, in seconds."""
    total = 0
    for p in tree(pid):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def peak_rss_mb(pid: int) -> float:
    """Sum of VmHWM over the tree (master + workers), MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    """Sum of VmRSS over the tree, MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Block until 127.0.0.1:port accepts, or raise if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"127.0.0.1:{port} not accepting after {timeout} s")
