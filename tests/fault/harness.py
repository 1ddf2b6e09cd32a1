"""Processes and clients of the fault suite: real sockets on 127.0.0.1, no mocks.

- `UpstreamProcess`: the recording upstream (`upstream.py`) as a child process.
- `ProxyProcess`: `python -m proxy serve -c FILE --state-dir DIR` on free ports,
  with its open fd count read from /proc/PID/fd and RSS from /proc/PID/status.
- `raw_exchange`: a raw-socket client that sends exact bytes and reports status,
  whether the proxy closed the connection, and the raw answer.
- `Conn` / `run_load`: a small keep-alive HTTP/1.1 client and an open-loop load
  generator that keeps one ledger entry per request (sent, answered, error).

Every wait is bounded by time; every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "upstream.py"
PROXY_ERROR_HEADER = "x-canaryproxy-error"


def free_port() -> int:
    """A port that was free a moment ago (the proxy binds it from its config file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proxy_available() -> bool:
    """True once the data plane exists: `serve` runs proxy.app.App."""
    import importlib.util

    return importlib.util.find_spec("proxy.app") is not None


def _wait(cond: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _stop_pid(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class UpstreamProcess:
    """One recording upstream (a Subset endpoint). `kill()` is a real SIGKILL."""

    def __init__(self, name: str, log: Path, port: int = 0) -> None:
        self.name, self.log, self.port = name, log, port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> UpstreamProcess:
        cmd = [sys.executable, str(UPSTREAM_SCRIPT), "--name", self.name, "--log", str(self.log)]
        cmd += ["--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the child prints READY or exits
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"upstream {self.name} did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def records(self, kind: str = "req") -> list[dict[str, Any]]:
        return read_records(self.log, kind)

    def mark(self) -> int:
        """The log position now; `since(mark)` returns what arrived afterwards."""
        return self.log.stat().st_size if self.log.exists() else 0

    def since(self, mark: int) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        with self.log.open("rb") as f:
            f.seek(mark)
            data = f.read()
        return [json.loads(line) for line in data.splitlines() if line.strip()]


def read_records(log: Path, kind: str = "req") -> list[dict[str, Any]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["kind"] == kind:
                out.append(rec)
    return out


def raw_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(base64.b64decode(r["raw"]) for r in records if r["kind"] == "raw")


def config_text(
    listen: int,
    admin: int,
    upstreams: dict[str, str],
    weights: dict[str, float] | None = None,
    limits: dict[str, Any] | None = None,
    extra_route: str = "",
    upstream_opts: str = "idle_timeout: 1s",
    route_opts: str = "",
) -> str:
    """A proxy config: one `default` route splitting over `upstreams` by `weights`."""
    weights = weights or {name: 1 for name in upstreams}
    lines = [f"listen: 127.0.0.1:{listen}", f"admin: {{listen: 127.0.0.1:{admin}}}"]
    lines.append("access_log: false")
    if limits:
        inner = ", ".join(f"{k}: {v}" for k, v in limits.items())
        lines.append(f"limits: {{{inner}}}")
    lines.append("upstreams:")
    opts = f", {upstream_opts}" if upstream_opts else ""
    # A short pool idle timeout lets the fd count settle back to its baseline quickly.
    lines += [f'  {n}: {{endpoints: ["{a}"]{opts}}}' for n, a in upstreams.items()]
    lines.append("routes:")
    if extra_route:
        lines.append(extra_route.rstrip())
    lines.append("  - name: default")
    lines.append("    route:")
    lines += [f"      - {{destination: {n}, weight: {w}}}" for n, w in weights.items()]
    if route_opts:
        lines.append(f"    {route_opts}")
    return "\n".join(x for x in lines if x) + "\n"


@dataclass
class ProxyProcess:
    """The real proxy as a child process, configured by a file in `workdir`."""

    workdir: Path
    config: str = ""
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "canaryproxy.yaml"

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)
        cmd = [sys.executable, "-m", "proxy", "serve", "-c", str(self.config_path)]
        cmd += ["--state-dir", str(self.workdir / "state")]
        log = (self.workdir / "proxy.log").open("ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not _wait(lambda: self._ready(), timeout):
            out = self.log_tail()
            self.stop()
            raise RuntimeError(f"proxy did not start within {timeout}s:\n{out}")
        return self

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited early:\n{self.log_tail()}")
        return _accepts(self.port) and _accepts(self.admin_port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        p = self.workdir / "proxy.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds_back_to(self, baseline: int, timeout: float = 6.0) -> bool:
        return _wait(lambda: self.fd_count() <= baseline, timeout, step=0.1)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc)


_NGINX_CONF = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  client_header_timeout {header_timeout};
  client_max_body_size 10m;
  upstream backend {{ {servers} keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                 proxy_set_header Connection ""; proxy_set_header Host localhost; }}
  }}
  server {{ listen 127.0.0.1:{admin}; location / {{ return 200 "ok"; }} }}
}}
"""


class NginxProcess(ProxyProcess):
    """The local nginx with the same upstreams: an oracle to check the harness itself."""

    kw: dict[str, Any]

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ups: dict[str, str] = self.kw["upstreams"]
        limits = self.kw.get("limits") or {}
        conf = _NGINX_CONF.format(
            dir=self.workdir,
            port=self.port,
            admin=self.admin_port,
            header_timeout=limits.get("header_timeout", "10s"),
            servers=" ".join(f"server {a};" for a in ups.values()),
        )
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        log = (self.workdir / "proxy.log").open("ab")
        cmd = ["nginx", "-p", str(self.workdir), "-c", str(path)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not _wait(lambda: self._ready(), timeout):
            self.stop()
            raise RuntimeError("nginx did not start")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, signal.SIGQUIT)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------- raw client


@dataclass
class RawResult:
    status: int | None  # first status line, None if nothing came back
    closed: bool  # the proxy closed (EOF or reset) within the wait
    data: bytes  # everything received
    statuses: list[int] = field(default_factory=list)  # every final status seen

    def header(self, name: str) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None


class _ResponseCounter:
    """httptools callbacks: counts complete responses and their statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)
        self.broken = False

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.broken = True
        except httptools.HttpParserError:
            self.broken = True


def raw_exchange(
    port: int,
    payload: bytes | list[bytes],
    timeout: float = 3.0,
    close_wait: float = 1.0,
    pause: float = 0.0,
) -> RawResult:
    """Send `payload` (a list = separate writes, `pause` seconds apart) and read the answer.

    Reads until the proxy closes, or `close_wait` s after the last complete response,
    or `timeout` s in all. `closed` tells whether the proxy closed the connection.
    """
    parts = payload if isinstance(payload, list) else [payload]
    counter, buf, closed = _ResponseCounter(), bytearray(), False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            for i, part in enumerate(parts):
                if i and pause:
                    time.sleep(pause)
                s.sendall(part)
        except OSError:
            pass  # the proxy may close before it read everything; the answer tells
        closed = _read_answer(s, counter, buf, timeout, close_wait)
    status = _first_status(bytes(buf))
    return RawResult(status, closed, bytes(buf), counter.statuses)


def _read_answer(
    s: socket.socket, counter: _ResponseCounter, buf: bytearray, timeout: float, close_wait: float
) -> bool:
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    while True:
        now = time.monotonic()
        limit = deadline if done_at is None else min(deadline, done_at + close_wait)
        if now >= limit:
            return False
        s.settimeout(limit - now)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        buf += chunk
        counter.feed(chunk)
        if counter.statuses and counter.statuses[-1] >= 200 and done_at is None:
            done_at = time.monotonic()


def _first_status(data: bytes) -> int | None:
    # Skip interim 1xx answers: the final status is what the case is about.
    for block in data.split(b"\r\n\r\n"):
        line = block.split(b"\r\n", 1)[0]
        if line.startswith(b"HTTP/1.") and len(line) >= 12 and line[9:12].isdigit():
            code = int(line[9:12])
            if code >= 200:
                return code
    return None


def health_get(port: int, path: str = "/health-probe") -> int | None:
    req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    return raw_exchange(port, req, timeout=5.0, close_wait=0.5).status


# --------------------------------------------------------------------- async client


class Conn:
    """One keep-alive HTTP/1.1 client connection (asyncio streams + llhttp)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reusable = True

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0) -> Conn:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        return cls(r, w)

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = {"Host": "localhost", "Content-Length": str(len(body)), **(headers or {})}
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        self.writer.write(head.encode("latin-1") + b"\r\n" + body)
        return await asyncio.wait_for(self._response(), timeout)

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        sink = _Sink()
        parser = httptools.HttpResponseParser(sink)
        while not sink.done:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed before a complete response")
            parser.feed_data(data)
        self.reusable = parser.should_keep_alive()
        return parser.get_status_code(), sink.headers, bytes(sink.body)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class _Sink:
    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


async def fetch(port: int, method: str, path: str, body: bytes = b"", **kw: Any) -> tuple:
    """One request on a fresh connection (admin calls, probes)."""
    conn = await Conn.open(port)
    try:
        return await conn.request(method, path, body=body, **kw)
    finally:
        await conn.close()


@dataclass
class Entry:
    """One request of a load run: the client ledger."""

    rid: str
    method: str
    sent_at: float
    status: int | None = None
    error: str = ""  # transport error, "" if answered
    proxy_error: str = ""  # x-canaryproxy-error of a proxy-made answer
    upstream: str = ""  # X-Upstream of an upstream answer
    done_at: float = 0.0


@dataclass
class Load:
    """Open-loop load: request i is due at start + i / rate, whatever earlier ones do."""

    port: int
    rate: float
    seconds: float
    run: str = "load"
    post_every: int = 2  # every Nth request is a POST with a body
    body_size: int = 64
    path: str = "/load"
    max_inflight: int = 256
    new_conn_each: bool = False
    ledger: list[Entry] = field(default_factory=list)
    _idle: list[Conn] = field(default_factory=list)

    async def run_load(self) -> list[Entry]:
        loop = asyncio.get_running_loop()
        start, sem = loop.time(), asyncio.Semaphore(self.max_inflight)
        tasks = []
        for i in range(int(self.rate * self.seconds)):
            delay = start + i / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(i, sem)))
        await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()
        for c in self._idle:
            await c.close()
        return self.ledger

    async def _one(self, i: int, sem: asyncio.Semaphore) -> None:
        post = self.post_every > 0 and i % self.post_every == 0
        e = Entry(f"{self.run}-{i}", "POST" if post else "GET", time.time())
        self.ledger.append(e)
        async with sem:
            await self._exchange(e, b"x" * self.body_size if post else b"")
        e.done_at = time.time()

    async def _exchange(self, e: Entry, body: bytes) -> None:
        conn = None
        try:
            conn = self._idle.pop() if self._idle and not self.new_conn_each else None
            conn = conn or await Conn.open(self.port)
            hdrs = {"X-Req-Id": e.rid}
            status, headers, _ = await conn.request(e.method, self.path, hdrs, body)
            e.status, e.upstream = status, headers.get("x-upstream", "")
            e.proxy_error = headers.get(PROXY_ERROR_HEADER, "")
            if conn.reusable and not self.new_conn_each:
                self._idle.append(conn)
                conn = None
        except (TimeoutError, OSError, httptools.HttpParserError) as exc:
            e.error = type(exc).__name__
        finally:
            if conn is not None:
                await conn.close()


def summarize(ledger: list[Entry], upstreams: list[UpstreamProcess], run: str) -> dict[str, Any]:
    """Reconcile the three counts: sent, received upstream (by request id), answered."""
    received: dict[str, int] = {}
    for u in upstreams:
        for r in u.records():
            if r["rid"].startswith(run + "-"):
                received[r["rid"]] = received.get(r["rid"], 0) + 1
    errs = [e for e in ledger if e.status is None or e.status >= 500]
    window = (min(e.sent_at for e in errs), max(e.sent_at for e in errs)) if errs else None
    post_ids = {e.rid for e in ledger if e.method == "POST"}
    return {
        "sent": len(ledger),
        "answered": sum(1 for e in ledger if e.status is not None),
        "received_upstream": len(received),
        "ok": sum(1 for e in ledger if e.status == 200),
        "errors": len(errs),
        "proxy_errors": sum(1 for e in ledger if e.proxy_error),
        "transport_errors": sum(1 for e in ledger if e.error),
        "duplicated": sorted(r for r, n in received.items() if n > 1),
        "duplicated_posts": sorted(r for r, n in received.items() if n > 1 and r in post_ids),
        "error_window_s": None if window is None else round(window[1] - window[0], 3),
        "error_window": window,
    }


# --------------------------------------------------------------------- admin API


async def admin_post(port: int, path: str, body: bytes = b"{}") -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    status, _, data = await fetch(port, "POST", path, body, headers=headers)
    return status, data


async def metric_values(port: int, name: str) -> dict[str, float]:
    """Samples of one metric from the admin /metrics: {'{labels}': value}."""
    _, _, data = await fetch(port, "GET", "/metrics")
    out: dict[str, float] = {}
    for line in data.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line[len(name) :].rpartition(" ")
            out[key] = float(value)
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step, so a watcher never reads half a config."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
