"""Harness for the fleet tests: a real etcd cluster, proxy replicas as processes, load.

Everything listens on 127.0.0.1 on ports from `free_port()`; every process is started with
`asyncio.create_subprocess_exec`, logs to a file under the test's `tmp_path`, and is
killed by PID (never by name) in `close()` / `aclose()`. Use the `async with` form or a
fixture that awaits `aclose()`, so the processes are also reaped by asyncio.

- `EtcdCluster(tmp_path, size=3)`: `await start()`, `endpoints`, `store_url(cluster)`,
  `await leader_index()`, `kill(i)`, `await restart(i)`, `stop_all()`,
  `await start_all_again()`, `cpu_rss()`, `await put/get(...)` (v3 JSON gateway),
  `close()` / `await aclose()`.
- `Replica(tmp_path, name, config_text, store_url)`: one `python -m proxy serve`.
  `config_text` is YAML passed through `str.format(listen=PORT, admin=PORT)`: write
  `listen: 127.0.0.1:{listen}` and `admin: {{listen: 127.0.0.1:{admin}}}`; every literal
  `{` / `}` (YAML flow mappings) must be doubled, `{{` / `}}`, as in an f-string.
- `Load(urls, rate=200, concurrency=8)`: `start()`, `await stop()` -> summary dict.
- `start_upstream(name, error_rate=0.0)`: an aiohttp upstream answering `name` (body and
  `x-version` header), optionally 500 with probability `error_rate` (a bad canary).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.util_servers import Upstream
from tests.util_servers import start_upstream as _start_upstream

ROOT = Path(__file__).resolve().parents[2]  # the repository root (cwd of the replicas)
ETCD = os.environ.get("CANARYPROXY_TEST_ETCD", "/usr/bin/etcd")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------- processes

_handed_out: set[int] = set()
_live: dict[int, str] = {}  # pid -> what it is, for the atexit safety net


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never the same one twice in this process."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port")


def _state(pid: int) -> str:
    """The /proc state letter of `pid` ("" when the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _dead(pid: int) -> bool:
    return _state(pid) in ("", "Z", "X")


def _wait_dead(pid: int, timeout: float) -> bool:
    """Wait (blocking, without reaping: asyncio's child watcher reaps) until `pid` exited."""
    deadline = time.monotonic() + timeout
    while not _dead(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    _signal(pid, signal.SIGKILL)
    if not _wait_dead(pid, timeout):
        raise RuntimeError(f"pid {pid} survived SIGKILL for {timeout}s")
    _live.pop(pid, None)


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only when a test forgot to close
    for pid, what in list(_live.items()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if what.encode() in cmdline and not _dead(pid):
            _signal(pid, signal.SIGKILL)


async def _spawn(
    args: list[str], log: Path, env: dict[str, str], cwd: Path | None = None
) -> asyncio.subprocess.Process:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        out.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
        out.flush()
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # a ^C of the test run does not reach it first
        )
    _live[proc.pid] = Path(args[0]).name if args[0] != sys.executable else "proxy"
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(utime+stime seconds, VmRSS KiB) of `pid` from /proc; (0.0, 0) when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state)
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return cpu, rss


# --------------------------------------------------------------------------- etcd


def b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


class EtcdCluster:
    """A `size`-member etcd cluster on loopback, data and logs under `tmp_path/etcd`.

    etcd 3.4's v3 JSON gateway: every int64 (member_id, leader, revision ...) is a JSON
    string; names are mixed: `header.member_id`, `kvs[].mod_revision` are snake_case but
    the status fields are camelCase (`dbSize`, `raftIndex`, `raftTerm`, `leader`); keys and
    values are base64; a field equal to its zero value is left out (an empty range has no
    "kvs" and no "count", a member that knows no leader has no "leader").
    """

    def __init__(self, tmp_path: Path, size: int = 3) -> None:
        self.dir = Path(tmp_path) / "etcd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.names = [f"m{i}" for i in range(size)]
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.token = "canaryproxy-" + secrets.token_hex(6)
        self.procs: list[asyncio.subprocess.Process | None] = [None] * size
        self.member_ids: list[str] = [""] * size  # filled by start()
        self._session: aiohttp.ClientSession | None = None

    # ---- addresses

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def store_url(self, cluster: str) -> str:
        return "etcd://" + ",".join(self.endpoints) + "/" + cluster

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    def data_dir(self, i: int) -> Path:
        return self.dir / f"{self.names[i]}.data"

    def log_path(self, i: int) -> Path:
        return self.dir / f"{self.names[i]}.log"

    def pid(self, i: int) -> int | None:
        proc = self.procs[i]
        return proc.pid if proc is not None and not _dead(proc.pid) else None

    def alive(self) -> list[int]:
        return [i for i in range(self.size) if self.pid(i) is not None]

    # ---- lifecycle

    def _args(self, i: int, state: str) -> list[str]:
        peers = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        client = f"http://127.0.0.1:{self.client_ports[i]}"
        peer = f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            ETCD,
            "--name", self.names[i],
            "--data-dir", str(self.data_dir(i)),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", peers,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    async def _spawn(self, i: int, state: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.procs[i] = await _spawn(self._args(i, state), self.log_path(i), env)

    async def start(self, timeout: float = 20.0) -> None:
        """Start every member (`--initial-cluster-state new`); wait for all and a leader."""
        for i in range(self.size):
            await self._spawn(i, "new")
        await self.wait_healthy(timeout=timeout)

    async def wait_healthy(self, members: list[int] | None = None, timeout: float = 20.0) -> None:
        """Wait until every member in `members` (default: all alive) answers status with
        the same, known leader."""
        members = self.alive() if members is None else members
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            for i in members:
                proc = self.procs[i]
                if proc is None or _dead(proc.pid):
                    raise RuntimeError(f"etcd {self.names[i]} exited:\n{_tail(self.log_path(i))}")
            try:
                statuses = [await self.status(i) for i in members]
                for i, st in zip(members, statuses, strict=True):
                    self.member_ids[i] = st["header"]["member_id"]
                leaders = {st.get("leader", "0") for st in statuses}
                if len(leaders) == 1 and "0" not in leaders:
                    return
                last = leaders
            except (aiohttp.ClientError, TimeoutError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members {members} not healthy: {last!r}")
            await asyncio.sleep(0.05)

    def kill(self, i: int) -> None:
        """SIGKILL member `i` by PID and wait until it is dead."""
        proc = self.procs[i]
        if proc is not None:
            _kill_and_wait(proc.pid)

    async def restart(self, i: int, timeout: float = 20.0) -> None:
        """Start member `i` again: same data dir and ports, `--initial-cluster-state existing`."""
        old = self.procs[i]
        if old is not None:
            _kill_and_wait(old.pid)
            await old.wait()
        await self._spawn(i, "existing")
        await self.wait_healthy([i], timeout=timeout)

    def stop_all(self, timeout: float = 1.0) -> None:
        """SIGTERM every member, SIGKILL what is left after `timeout`; wait until all died.

        An etcd 3.4 leader that gets SIGTERM first transfers its leadership; when its
        followers are stopping at the same moment it can hang in shutdown for seconds, so
        the SIGKILL after `timeout` is normal here (etcd fsyncs its WAL: no data is lost)."""
        pids = [p for i in range(self.size) if (p := self.pid(i)) is not None]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        for pid in pids:
            if not _wait_dead(pid, timeout):
                _kill_and_wait(pid)
            _live.pop(pid, None)

    async def start_all_again(self, timeout: float = 20.0) -> None:
        """Start every stopped member on its old data dir at once; wait for a leader."""
        for i in range(self.size):
            old = self.procs[i]
            if old is not None and not _dead(old.pid):
                continue
            if old is not None:
                await old.wait()
            await self._spawn(i, "existing")
        await self.wait_healthy(list(range(self.size)), timeout=timeout)

    def cpu_rss(self) -> list[tuple[float, int]]:
        """Per member: (utime+stime seconds, VmRSS KiB); (0.0, 0) for a dead member."""
        return [_proc_cpu_rss(p) if (p := self.pid(i)) else (0.0, 0) for i in range(self.size)]

    def close(self) -> None:
        """SIGKILL every member this cluster started (by PID) and wait until dead."""
        for proc in self.procs:
            if proc is not None:
                _kill_and_wait(proc.pid)

    async def aclose(self) -> None:
        self.close()
        for proc in self.procs:
            if proc is not None:
                await proc.wait()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EtcdCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- the v3 JSON gateway

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=2.0),
                connector=aiohttp.TCPConnector(force_close=True),  # a killed member: no stale
            )
        return self._session

    async def call(self, i: int, path: str, body: dict[str, Any], timeout: float = 2.0) -> Any:
        """POST `body` to member `i`'s gateway at `path` (e.g. "/v3/kv/put"); JSON answer.
        Raises `EtcdError` on an HTTP error (the gateway answers errors as JSON too)."""
        async with self._http().post(
            self.url(i) + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                raise EtcdError(r.status, data)
            return data

    async def status(self, i: int) -> dict[str, Any]:
        return await self.call(i, "/v3/maintenance/status", {})

    async def leader_index(self, timeout: float = 5.0) -> int:
        """Index of the current leader, asked of the alive members (retries an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for i in self.alive():
                try:
                    st = await self.status(i)
                except (aiohttp.ClientError, TimeoutError, EtcdError):
                    continue
                self.member_ids[i] = st["header"]["member_id"]
                leader = st.get("leader", "0")
                if leader != "0" and leader in self.member_ids:
                    j = self.member_ids.index(leader)
                    if j in self.alive():
                        return j
            if time.monotonic() > deadline:
                raise TimeoutError("no etcd leader")
            await asyncio.sleep(0.05)

    async def put(self, i: int, key: str, value: str, timeout: float = 2.0) -> dict[str, Any]:
        return await self.call(i, "/v3/kv/put", {"key": b64(key), "value": b64(value)}, timeout)

    async def get(self, i: int, key: str, serializable: bool = False) -> str | None:
        """The value of `key` read through member `i` (None when absent). `serializable`:
        the member's local copy, no quorum read (what a catching-up member has)."""
        body: dict[str, Any] = {"key": b64(key)}
        if serializable:
            body["serializable"] = True
        data = await self.call(i, "/v3/kv/range", body)
        kvs = data.get("kvs", [])
        return unb64(kvs[0].get("value", "")) if kvs else None


class EtcdError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"etcd gateway {status}: {body}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- replicas


class Replica:
    """One `python -m proxy serve` process (a fleet member when `store_url` is given).

    `config_text` is formatted with `str.format(listen=..., admin=...)` (free ports): use
    `listen: 127.0.0.1:{listen}` and `admin: {{listen: 127.0.0.1:{admin}}}`, and double
    every other literal brace. A random bearer token is put in `$CANARYPROXY_TOKEN` of the
    child (the default `admin.token_env`) and sent with every admin call.
    """

    def __init__(
        self,
        tmp_path: Path,
        name: str,
        config_text: str,
        store_url: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.dir = Path(tmp_path) / f"replica-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.listen_port = free_port()
        self.admin_port = free_port()
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(
            config_text.format(listen=self.listen_port, admin=self.admin_port)
        )
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "replica.log"
        self.store_url = store_url
        self.extra_args = list(extra_args or [])
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, "CANARYPROXY_TOKEN": self.token, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and not _dead(self.proc.pid) else None

    @property
    def args(self) -> list[str]:
        args = [sys.executable, "-m", "proxy", "serve", "-c", str(self.config_path)]
        args += ["--state-dir", str(self.state_dir)]
        if self.store_url is not None:
            args += ["--store", self.store_url, "--replica", self.name]
        return args + self.extra_args

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, ready_timeout: float = 20.0) -> None:
        """Start the process; wait until GET /api/v1/status answers 200."""
        self.proc = await _spawn(self.args, self.log_path, self.env, cwd=ROOT)
        deadline = time.monotonic() + ready_timeout
        last: Any = None
        while True:
            if _dead(self.proc.pid):
                code = await self.proc.wait()
                raise RuntimeError(f"replica {self.name} exited {code}:\n{_tail(self.log_path)}")
            try:
                status, body = await self.admin("GET", "/api/v1/status", timeout=1.0)
                if status == 200:
                    return
                last = (status, body)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"replica {self.name} not ready in {ready_timeout}s: {last!r}\n"
                    + _tail(self.log_path)
                )
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL by PID, wait until dead (a stopped process dies too)."""
        if self.proc is not None:
            _kill_and_wait(self.proc.pid)

    def stop(self) -> None:
        """SIGSTOP: the process freezes (its sockets stay open, nothing answers)."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after `stop()`."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    async def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful drain) and wait for the exit code; SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        _signal(self.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        _signal(self.proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            _kill_and_wait(self.proc.pid)
            code = await self.proc.wait()
        _live.pop(self.proc.pid, None)
        return code

    async def restart(self, ready_timeout: float = 20.0) -> None:
        """SIGKILL if still running, then start again: same config, ports and state dir."""
        if self.proc is not None:
            _signal(self.proc.pid, signal.SIGCONT)
            _kill_and_wait(self.proc.pid)
            await self.proc.wait()
        await self.start(ready_timeout)

    def cpu_rss(self) -> tuple[float, int]:
        return _proc_cpu_rss(self.pid) if self.pid else (0.0, 0)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self._session

    async def admin(
        self, method: str, path: str, body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """Call the admin API; (status, parsed JSON or the text when it is not JSON)."""
        headers = {"Host": "127.0.0.1", "Authorization": f"Bearer {self.token}"}
        async with self._http().request(
            method,
            self.admin_url + path,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def status(self) -> dict[str, Any]:
        code, body = await self.admin("GET", "/api/v1/status")
        if code != 200:
            raise RuntimeError(f"status of {self.name}: {code} {body}")
        return body

    def close(self) -> None:
        if self.proc is not None:
            _signal(self.proc.pid, signal.SIGCONT)
            _kill_and_wait(self.proc.pid)

    async def aclose(self) -> None:
        self.close()
        if self.proc is not None:
            await self.proc.wait()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Replica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- upstreams, load


async def start_upstream(
    name: str, error_rate: float = 0.0, seed: int | None = None, delay: float = 0.0
) -> Upstream:
    """An upstream (tests.util_servers) answering body `name` with header `x-version: name`;
    with probability `error_rate` a 500 instead (body `name` too). /health is always 200."""
    rng = random.Random(seed)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(text="ok")
        if delay:
            await asyncio.sleep(delay)
        status = 500 if error_rate and rng.random() < error_rate else 200
        return web.Response(status=status, text=name, headers={"x-version": name})

    return await _start_upstream(handle, name=name)


class Load:
    """Bounded load: at most `rate` requests/s and `concurrency` in flight, round-robin over
    `urls` (e.g. replicas' `proxy_url` + path). `stop()` returns the summary:
    {sent, ok, errors, error_samples (first 10), by_version, by_status, by_url}.
    A 2xx counts as ok; any other status or an exception is an error. The version is the
    response's `version_header` (default `x-version`, set by `start_upstream`), else its body.
    """

    def __init__(
        self,
        urls: list[str] | str,
        rate: float = 200.0,
        concurrency: int = 8,
        timeout: float = 2.0,
        headers: dict[str, str] | None = None,
        version_header: str = "x-version",
        total: int | None = None,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.rate = rate
        self.concurrency = concurrency
        self.timeout = timeout
        self.headers = headers or {}
        self.version_header = version_header
        self.total = total
        self.sent = 0
        self.ok = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.by_version: dict[str, int] = {}
        self.by_status: dict[int, int] = {}
        self.by_url: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        self._t0 = 0.0

    def start(self) -> Load:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(limit=self.concurrency),
        )
        self._running = True
        self._t0 = time.monotonic()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    def _error(self, sample: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(sample)

    async def _worker(self) -> None:
        assert self._session is not None
        while self._running and (self.total is None or self.sent < self.total):
            n = self.sent
            self.sent += 1
            delay = self._t0 + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if not self._running:
                    self.sent -= 1
                    break
            url = self.urls[n % len(self.urls)]
            self.by_url[url] = self.by_url.get(url, 0) + 1
            try:
                async with self._session.get(url, headers=self.headers) as r:
                    text = await r.text()
                    self.by_status[r.status] = self.by_status.get(r.status, 0) + 1
                    version = r.headers.get(self.version_header) or text.strip()[:40]
                    self.by_version[version] = self.by_version.get(version, 0) + 1
                    if 200 <= r.status < 300:
                        self.ok += 1
                    else:
                        self._error(f"{url}: {r.status} {text[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._error(f"{url}: {type(exc).__name__}: {exc}")

    async def wait(self) -> None:
        """Wait for a `total`-bounded load to finish."""
        await asyncio.gather(*self._tasks)

    async def stop(self) -> dict[str, Any]:
        self._running = False
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=self.timeout + 1)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.ok + self.errors,
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": list(self.error_samples),
            "by_version": dict(self.by_version),
            "by_status": dict(self.by_status),
            "by_url": dict(self.by_url),
            "seconds": round(time.monotonic() - self._t0, 3),
        }
