"""Open-loop HTTP/1.1 load: `python -m benchmarks.openloop --port P --rate R --seconds S`.

Request i is due at start + i / rate, fixed in advance whatever earlier requests do, and its
latency is measured from that scheduled time (no coordinated omission: a request that waits
for a connection, or is sent late because this process fell behind, counts the wait).
Due requests go out in batches at least 1 ms apart (~1 ms of send lag is normal). Each
request goes on a free keep-alive connection from a pool that grows on demand up to
`--max-conns`; when the cap is hit, requests wait in FIFO order for the next free one.
A request not answered `--timeout` seconds after its scheduled time counts as a timeout
(its connection is dropped). Responses are parsed for the status line, Content-Length,
chunked bodies, `Connection: close`, `Retry-After` and `x-canaryproxy-error`.

uvloop and raw asyncio Protocols, one process; prints one JSON line: offered rate, achieved
schedule rate and the rate requests were actually written to connections (`written_rps`), goodput (2xx/s), 503/s and how many carried Retry-After, other statuses, errors,
timeouts, latency percentiles of 2xx and of 503s, completions per second, and how late the
sends were (`send_lag_*`: if large, this process could not offer the rate).
`start()` / `collect()` run it pinned to the load CPU from another program.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import deque
from typing import Any

from benchmarks import procs
from benchmarks.proxies import REPO
from benchmarks.ws_load import fast_loop


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


class Client(asyncio.Protocol):
    """One keep-alive connection: at most one request outstanding."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.sched = 0.0  # scheduled time of the request outstanding, 0 when free
        self.buf = b""
        self.need = -1  # bytes of the current response (head + body) once the head is read
        self.chunked = False
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, sched: float) -> None:
        self.sched = sched
        assert self.transport is not None
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        if not self.sched:
            return  # bytes after a timed-out request: the connection is being dropped
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = self.buf[:end].lower()
            self.need = end + 4
            i = self.head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = self.head.find(b"\r\n", i + 2)
                self.need += int(self.head[i + 17 : j if j >= 0 else None])
            else:
                self.chunked = b"\r\ntransfer-encoding: chunked" in self.head
        if self.chunked:
            if not self.buf.endswith(b"\r\n0\r\n\r\n") and b"\r\n\r\n0\r\n\r\n" not in self.buf:
                return
            self.need = len(self.buf)
        elif len(self.buf) < self.need:
            return
        head, self.buf = self.head, self.buf[self.need :]
        self.need, self.chunked = -1, False
        sched, self.sched = self.sched, 0.0
        self.gen.answered(self, sched, head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)
        self.transport = None


class Generator:
    """The schedule, the connection pool and the counters of one run."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        lines = [f"GET {a.path} HTTP/1.1", f"Host: {a.host}", *a.header]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.loop = asyncio.get_running_loop()
        self.idle: list[Client] = []
        self.busy: set[Client] = set()
        self.conns = 0  # open or opening
        self.opened = 0
        self.waiting: deque[float] = deque()
        self.start = 0.0
        self.end = float("inf")  # end of the offered window
        self.written = 0  # requests written to a connection inside that window
        self.ok: list[float] = []
        self.s503: list[float] = []
        self.other: list[float] = []
        self.retry_after = 0
        self.statuses: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.timeouts = 0
        self.lags: list[float] = []
        self.per_second: dict[int, list[int]] = {}  # second -> [2xx, 503, other]
        self.max_busy = 0

    # --- pool -------------------------------------------------------------------------------
    def submit(self, sched: float) -> None:
        if self.idle:
            self._send(self.idle.pop(), sched)
            return
        self.waiting.append(sched)
        if self.conns < self.a.max_conns:
            self.conns += 1
            self.loop.create_task(self._open())

    def _send(self, c: Client, sched: float) -> None:
        if time.perf_counter() < self.end:
            self.written += 1
        self.busy.add(c)
        self.max_busy = max(self.max_busy, len(self.busy))
        c.send(sched)

    async def _open(self) -> None:
        try:
            _, c = await self.loop.create_connection(lambda: Client(self), "127.0.0.1", self.a.port)
        except OSError as exc:
            self.conns -= 1
            self._error(type(exc).__name__)
            if self.waiting:
                self.waiting.popleft()
            return
        self.opened += 1
        self._free(c)

    def _free(self, c: Client) -> None:
        if self.waiting:
            self._send(c, self.waiting.popleft())
        else:
            self.idle.append(c)

    def answered(self, c: Client, sched: float, head: bytes) -> None:
        now = time.perf_counter()
        self.busy.discard(c)
        ms = (now - sched) * 1000
        status = int(head[9:12])
        sec = self.per_second.setdefault(int(now - self.start), [0, 0, 0])
        if 200 <= status < 300:
            self.ok.append(ms)
            sec[0] += 1
        elif status == 503:
            self.s503.append(ms)
            sec[1] += 1
            if b"\r\nretry-after:" in head:
                self.retry_after += 1
        else:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            self.other.append(ms)
            sec[2] += 1
        i = head.find(b"\r\nx-canaryproxy-error:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            reason = f"{status} {head[i + 22 : j if j >= 0 else None].strip().decode()}"
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if b"\r\nconnection: close" in head:
            assert c.transport is not None
            c.transport.close()  # lost() forgets it
            return
        self._free(c)

    def lost(self, c: Client) -> None:
        self.conns -= 1
        self.busy.discard(c)
        try:
            self.idle.remove(c)
        except ValueError:
            pass
        if c.sched:
            self._error("closed")
            c.sched = 0.0
        if self.waiting and self.conns < self.a.max_conns:
            self.conns += 1
            self.loop.create_task(self._open())

    def _error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # --- deadlines --------------------------------------------------------------------------
    def expire(self) -> None:
        limit = time.perf_counter() - self.a.timeout
        while self.waiting and self.waiting[0] < limit:
            self.waiting.popleft()
            self.timeouts += 1
        for c in [c for c in self.busy if c.sched and c.sched < limit]:
            self.timeouts += 1
            c.sched = 0.0
            if c.transport is not None:
                c.transport.abort()

    async def _expiry(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.expire()

    # --- run --------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        a = self.a
        for _ in range(min(a.warm, a.max_conns)):
            self.conns += 1
            await self._open()
        expiry = self.loop.create_task(self._expiry())
        n = int(a.rate * a.seconds)
        step = 1.0 / a.rate
        self.start = start = time.perf_counter()
        self.end = start + a.seconds
        self.written = 0
        i = 0
        while i < n:
            now = time.perf_counter()
            while i < n and start + i * step <= now:
                sched = start + i * step
                self.lags.append(now - sched)
                self.submit(sched)
                i += 1
            if i < n:  # at least 1 ms: a shorter sleep spins, and the upstream shares the CPU
                await asyncio.sleep(max(0.001, start + i * step - time.perf_counter()))
        sent_for = time.perf_counter() - start
        deadline = time.perf_counter() + a.timeout + 0.2
        while (self.busy or self.waiting) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        self.expire()
        expiry.cancel()
        for c in list(self.idle) + list(self.busy):
            if c.transport is not None:
                c.transport.close()
        return self.summary(n, sent_for)

    def summary(self, n: int, sent_for: float) -> dict[str, Any]:
        a = self.a
        ok, s503, lags = sorted(self.ok), sorted(self.s503), sorted(self.lags)
        other = sorted(self.other)
        secs = max(self.per_second, default=-1) + 1
        # 2xx completed inside the offered window: a backlog drained afterwards is not goodput
        in_window = sum(self.per_second.get(s, [0])[0] for s in range(int(a.seconds)))
        return {
            "offered_rps": a.rate,
            "seconds": a.seconds,
            "sent": n,
            "achieved_rps": round(n / sent_for, 1) if sent_for else 0.0,
            "written_rps": round(self.written / a.seconds, 1),
            "ok": len(ok),
            "goodput_rps": round(in_window / a.seconds, 1),
            "s503": len(s503),
            "s503_rps": round(len(s503) / a.seconds, 1),
            "s503_retry_after": self.retry_after,
            "other_status": self.statuses,
            "reasons": self.reasons,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "ok_p50_ms": round(percentile(ok, 50), 3),
            "ok_p99_ms": round(percentile(ok, 99), 3),
            "ok_max_ms": round(ok[-1], 3) if ok else 0.0,
            "s503_p50_ms": round(percentile(s503, 50), 3),
            "s503_p99_ms": round(percentile(s503, 99), 3),
            "s503_max_ms": round(s503[-1], 3) if s503 else 0.0,
            "other_p50_ms": round(percentile(other, 50), 3),
            "other_max_ms": round(other[-1], 3) if other else 0.0,
            "send_lag_p99_ms": round(percentile(lags, 99) * 1000, 3),
            "send_lag_max_ms": round(lags[-1] * 1000, 3) if lags else 0.0,
            "conns_opened": self.opened,
            "max_busy": self.max_busy,
            "per_second": [self.per_second.get(s, [0, 0, 0]) for s in range(secs)],
        }


def command(
    port: int,
    rate: float,
    seconds: float,
    path: str = "/",
    max_conns: int = 512,
    timeout: float = 5.0,
    headers: tuple[str, ...] = (),
) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.openloop", "--port", str(port), "--rate", str(rate)]
    cmd += ["--seconds", str(seconds), "--path", path, "--max-conns", str(max_conns)]
    cmd += ["--timeout", str(timeout)]
    for h in headers:
        cmd += ["--header", h]
    return cmd


def start(port: int, rate: float, seconds: float, cpu: int | None = 1, **kw: Any) -> Any:
    """Start one run in its own process pinned to `cpu`; `collect()` its result."""
    cmd = procs.pinned(command(port, rate, seconds, **kw), cpu)
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def collect(proc: Any, timeout: float = 90.0) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"openloop failed ({proc.returncode}): {err.strip()[-800:]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(port: int, rate: float, seconds: float, **kw: Any) -> dict[str, Any]:
    return collect(start(port, rate, seconds, **kw), timeout=seconds + 60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.openloop", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second offered")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--path", default="/")
    p.add_argument("--host", default="localhost")
    p.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    p.add_argument("--max-conns", type=int, default=512, help="connection pool cap")
    p.add_argument("--warm", type=int, default=16, help="connections opened before the start")
    p.add_argument("--timeout", type=float, default=5.0, help="client deadline, seconds")
    a = p.parse_args(argv)
    procs.raise_nofile()
    fast_loop()

    async def go() -> dict[str, Any]:
        return await Generator(a).run()

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
