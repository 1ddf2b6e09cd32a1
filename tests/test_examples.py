"""Every shipped example in config/*.yaml does what its comments say.

Each file is read with the real loader; only its addresses move (listen, admin.listen, the
upstream endpoints and webhook URLs) to ports of this test, and a check proves that nothing
else changed. The real App then serves it to real upstreams on 127.0.0.1, and the requests
below check each promise of the file's comments, driving the admin through the same
`canaryproxy` verbs the comments show. Random splits are checked over enough requests that
the bounds sit more than six standard deviations from the expected count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from proxy.app import App
from proxy.config.load import load_file
from proxy.config.schema import Config
from proxy.demo_upstream import Behaviour
from proxy.demo_upstream import Upstream as DemoUpstream
from tests.util_servers import start_upstream

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"
EXAMPLES = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
# What the README quick start runs: `python -m proxy.demo_upstream --version v1 --port 9001`
# and `--version v2 --port 9002`. An example that points anywhere else fails out of the box.
QUICK_START = ("127.0.0.1:9001", "127.0.0.1:9002")
TOKEN = "example-test-token"
DEADLINE = 30.0  # seconds a rollout may take to reach a phase before the test gives up


def canaryproxy() -> list[str]:
    script = Path(sys.executable).with_name("canaryproxy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def load(path: Path) -> Config:
    config, errors = load_file(str(path))
    assert config is not None, "\n".join(errors)
    return config


# -- moving the addresses, and nothing else -----------------------------------------------


def _url(url: str, moves: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc in moves, f"{url} is not served by the quick start {QUICK_START}"
    return parts._replace(netloc=moves[parts.netloc]).geturl()


def move_text(data: dict[str, Any], moves: dict[str, str], interval: str | None) -> None:
    """The YAML mapping with its addresses moved (and the canaries' interval, if given)."""
    if "listeners" in data:  # one loopback address each: two cannot both say 127.0.0.1:0
        for i, listener in enumerate(data["listeners"]):
            listener["listen"] = f"127.0.0.{i + 1}:0"
    else:
        data["listen"] = "127.0.0.1:0"
    data["admin"]["listen"] = "127.0.0.1:0"
    for up in data["upstreams"].values():
        up["endpoints"] = [moves[e] for e in up["endpoints"]]
    for canary in data.get("canaries", []):
        analysis = canary["analysis"]
        for hook in [*analysis.get("webhooks", []), *analysis.get("alerts", [])]:
            hook["url"] = _url(hook["url"], moves)
        if interval is not None:
            analysis["interval"] = interval


def move_config(config: Config, moves: dict[str, str], interval: float | None) -> Config:
    """The same change as `move_text`, made on the validated Config."""
    rep = dataclasses.replace
    ups = tuple(rep(u, endpoints=tuple(moves[e] for e in u.endpoints)) for u in config.upstreams)
    canaries = []
    for c in config.canaries:
        a = c.analysis
        a = rep(
            a,
            webhooks=tuple(rep(h, url=_url(h.url, moves)) for h in a.webhooks),
            alerts=tuple(rep(h, url=_url(h.url, moves)) for h in a.alerts),
            interval=a.interval if interval is None else interval,
        )
        canaries.append(rep(c, analysis=a))
    listeners = tuple(rep(x, listen=f"127.0.0.{i + 1}:0") for i, x in enumerate(config.listeners))
    return rep(
        config,
        listen="127.0.0.1:0",
        listeners=listeners,
        admin=rep(config.admin, listen="127.0.0.1:0"),
        upstreams=ups,
        canaries=tuple(canaries),
    )


# -- a running example ----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def answering(name: str) -> Handler:
    """An upstream that names its version in the body and in `x-version` (as the demo's)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(text=f"{name}\n", headers={"x-version": name})

    return handle


@dataclass
class Served:
    app: App
    session: aiohttp.ClientSession
    backends: dict[str, Any]  # subset name -> its upstream
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.app.admin_port}"

    async def get(
        self, headers: dict[str, str] | None = None, path: str = "/"
    ) -> tuple[str, aiohttp.ClientResponse]:
        """(the version that answered, the response) for one request."""
        async with self.session.get(self.url + path, headers=headers or {}) as r:
            await r.read()
            return r.headers.get("x-version", f"status {r.status}"), r

    async def versions(
        self, n: int, headers: Callable[[int], dict[str, str]] = lambda i: {}
    ) -> Counter[str]:
        """Versions answering requests 0..n-1 (`headers(i)` shapes request i), 16 at a time."""
        seen: Counter[str] = Counter()
        for start in range(0, n, 16):
            batch = range(start, min(n, start + 16))
            for v, _ in await asyncio.gather(*(self.get(headers(i)) for i in batch)):
                seen[v] += 1
        return seen

    async def cli(self, *args: str) -> str:
        """`canaryproxy ARGS...` against this admin, as a user runs it; it must exit 0."""
        proc = await asyncio.create_subprocess_exec(
            *canaryproxy(),
            *args,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, f"canaryproxy {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with self.session.request(method, self.admin + path, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def canary(self, name: str = "default") -> dict[str, Any]:
        """The canary's status, with its route's weights of the same moment as `weights`."""
        status = await self.api("GET", "/api/v1/status")
        c = next(c for c in status["canaries"] if c["name"] == name)
        weights = next(r["weights"] for r in status["routes"] if r["name"] == c["route"])
        return {**c, "weights": weights}

    async def weights(self, route: str = "default") -> dict[str, float]:
        status = await self.api("GET", "/api/v1/status")
        return next(r["weights"] for r in status["routes"] if r["name"] == route)

    async def until_phase(self, *phases: str, name: str = "default") -> dict[str, Any]:
        """Poll the canary until it reaches one of `phases` (at most DEADLINE seconds)."""
        async with asyncio.timeout(DEADLINE):
            while (c := await self.canary(name))["phase"] not in phases:
                await asyncio.sleep(0.05)
        return c


async def _backend(name: str, demo: dict[str, Behaviour] | None) -> Any:
    if demo is None:
        return await start_upstream(answering(name))
    return await DemoUpstream(demo.get(name, Behaviour(name))).start()


async def _close(backend: Any) -> None:
    await (backend.stop() if isinstance(backend, DemoUpstream) else backend.close())


@asynccontextmanager
async def serving(
    name: str,
    tmp: Path,
    interval: str | None = None,
    demo: dict[str, Behaviour] | None = None,
) -> AsyncIterator[Served]:
    """Serve config/NAME with its addresses moved to this test's upstreams and ports.

    `demo`: run `proxy.demo_upstream` (the quick start's program, with these behaviours by
    subset name) instead of the recording test upstream. `interval`: a shorter canary
    analysis interval, so a rollout of several steps fits in a test.
    """
    source = CONFIG_DIR / name
    original = load(source)
    owner = {e: u.name for u in original.upstreams for e in u.endpoints}
    backends = {a: await _backend(owner.get(a, a), demo) for a in QUICK_START}
    try:
        moves = {a: b.address for a, b in backends.items()}
        data = yaml.safe_load(source.read_text())
        move_text(data, moves, interval)
        moved = tmp / name
        moved.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load(moved)
        seconds = config.canaries[0].analysis.interval if interval else None
        assert config == move_config(original, moves, seconds)
        assert original.admin.token_env == "CANARYPROXY_TOKEN"  # set by the `_token` fixture
        env = os.environ.copy()
        app = App(str(moved), str(tmp / "state"), watch_interval=0)
        await app.start()
        env["CANARYPROXY_ADMIN"] = f"http://127.0.0.1:{app.admin_port}"
        jar = aiohttp.DummyCookieJar()  # cookies are sent by hand: each request is a client
        try:
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                yield Served(app, session, {owner.get(a, a): b for a, b in backends.items()}, env)
        finally:
            await app.stop()
    finally:
        for b in backends.values():
            await _close(b)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example's admin reads its token from CANARYPROXY_TOKEN; set one for the test."""
    monkeypatch.setenv("CANARYPROXY_TOKEN", TOKEN)


def clients(users: list[str], n: int = 8) -> list[list[str]]:
    return [users[i::n] for i in range(n)]


class Load:
    """Steady traffic: one sequential client per list of users, each cycling through its
    users one request at a time, recording per user the versions that answered, in order."""

    def __init__(self, served: Served, users: list[list[str]]) -> None:
        self.served, self.users = served, users
        self.seen: dict[str, list[str]] = {u: [] for us in users for u in us}
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._client(users)) for users in self.users]
        return self

    async def _client(self, users: list[str]) -> None:
        while True:
            for user in users:
                v, _ = await self.served.get({"user-id": user})
                self.seen[user].append(v)

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- every file -------------------------------------------------------------------------------

BEHAVIOUR: list[str] = []  # test_NAME or test_NAME__more checks config/NAME.yaml ("_" as "-")


def behaviour(fn: Callable[..., Any]) -> Callable[..., Any]:
    BEHAVIOUR.append(fn.__name__.split("__")[0])
    return fn


@pytest.mark.parametrize("name", EXAMPLES)
def test_validate_accepts_the_example(name: str) -> None:
    done = subprocess.run(
        [*canaryproxy(), "validate", "-c", f"config/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_reaches_only_the_quick_start_upstreams(name: str) -> None:
    """Endpoints, webhooks and alerts all point at the two demo upstreams a new user runs."""
    config = load(CONFIG_DIR / name)
    addresses = {e for u in config.upstreams for e in u.endpoints}
    for c in config.canaries:
        hooks = [*c.analysis.webhooks, *c.analysis.alerts]
        addresses |= {urllib.parse.urlsplit(h.url).netloc for h in hooks}
    assert addresses <= set(QUICK_START)


def test_every_example_has_a_behaviour_test() -> None:
    tested = {n.removeprefix("test_").replace("_", "-") + ".yaml" for n in BEHAVIOUR}
    assert tested == set(EXAMPLES)


# -- what each file's comments promise ------------------------------------------------------


@behaviour
async def test_example(tmp_path: Path) -> None:
    """95 % of traffic to v1, 5 % to v2 (random per request)."""
    async with serving("example.yaml", tmp_path) as s:
        assert await s.weights() == {"v1": 95, "v2": 5}
        seen = await s.versions(2000)
        assert set(seen) == {"v1", "v2"}
        assert 40 <= seen["v2"] <= 180, seen  # expected 100, sd 9.7


@behaviour
async def test_ab_header(tmp_path: Path) -> None:
    """Even last digit of user-id -> version A, odd -> B; no user-id -> 50/50."""
    async with serving("ab-header.yaml", tmp_path) as s:
        for i in range(40):
            want = "version-a" if i % 2 == 0 else "version-b"
            for user in (f"user-{i}", f"{i}"):
                v, _ = await s.get({"user-id": user})
                assert v == want, user
        seen = await s.versions(400)
        assert set(seen) == {"version-a", "version-b"}
        assert 120 <= seen["version-a"] <= 280, seen  # expected 200, sd 10


@behaviour
async def test_blue_green(tmp_path: Path) -> None:
    """All traffic on blue; the preview header reaches green; `switch` flips both ways."""
    async with serving("blue-green.yaml", tmp_path) as s:
        preview = {"x-canary-preview": "1"}

        async def answers() -> tuple[set[str], set[str]]:
            plain = await s.versions(50)
            previewed = await s.versions(50, lambda i: preview)
            return set(plain), set(previewed)

        assert await answers() == ({"blue"}, {"green"})
        await s.cli("switch", "default", "green")
        assert await s.weights() == {"blue": 0, "green": 100}
        assert await answers() == ({"green"}, {"blue"})
        await s.cli("switch", "default", "blue")
        assert await answers() == ({"blue"}, {"green"})


@behaviour
async def test_cookie_sticky(tmp_path: Path) -> None:
    """beta_tester=true reaches v2; others split 90/10 and pinned by the `version` cookie for
    a day (version=v2 set by the client pins it too); v2 at weight 0 moves pinned clients
    back to v1 while beta testers stay on v2."""
    async with serving("cookie-sticky.yaml", tmp_path) as s:
        beta = {"Cookie": "beta_tester=true"}
        pinned = {v: {"Cookie": f"version={v}"} for v in ("v1", "v2")}
        assert set(await s.versions(20, lambda i: beta)) == {"v2"}
        fresh = [a for _ in range(50) for a in await asyncio.gather(*(s.get() for _ in range(20)))]
        for v, r in fresh:  # 1000 first visits: each is pinned to the version it was sent to
            cookie = r.cookies["version"]
            assert (cookie.value, cookie["max-age"]) == (v, "86400")
        on_v2 = sum(v == "v2" for v, _ in fresh)
        assert 40 <= on_v2 <= 200, on_v2  # expected 100, sd 9.5
        for v, headers in pinned.items():
            answers = [await s.get(headers) for _ in range(30)]
            assert {a for a, _ in answers} == {v}
            assert all("version" not in r.cookies for _, r in answers)  # the pin stands
        await s.cli("weights", "default", "v1=100", "v2=0")
        assert set(await s.versions(20, lambda i: beta)) == {"v2"}
        v, r = await s.get(pinned["v2"])
        assert (v, r.cookies["version"].value) == ("v1", "v1")
        assert set(await s.versions(30, lambda i: pinned["v2"])) == {"v1"}


USERS = [f"user-{i:04d}" for i in range(1000)]


@behaviour
async def test_gray_release(tmp_path: Path) -> None:
    """Each `weights` stage keeps every user on one version, raising v2 only moves users
    from v1 to v2, and `undo` restores the previous stage's exact users."""
    async with serving("gray-release.yaml", tmp_path) as s:

        async def on_v2() -> set[str]:
            seen = [await s.get({"user-id": u}) for u in USERS]
            again = [await s.get({"user-id": u}) for u in USERS[:100]]
            assert [v for v, _ in again] == [v for v, _ in seen[:100]]  # weights stood still
            return {u for u, (v, _) in zip(USERS, seen, strict=True) if v == "v2"}

        before: set[str] = set()
        by_stage: list[set[str]] = []
        for v2 in (5, 10, 25, 50, 75, 100):
            await s.cli("weights", "default", f"v1={100 - v2}", f"v2={v2}")
            assert await s.weights() == {"v1": 100 - v2, "v2": v2}
            users = await on_v2()
            assert before <= users  # nobody moved back to v1
            # fixed ids through a pinned hash: the same counts on every run
            assert abs(len(users) / len(USERS) * 100 - v2) <= 5, (v2, len(users))
            by_stage.append(users)
            before = users
        assert by_stage[-1] == set(USERS)
        await s.cli("undo")
        assert await s.weights() == {"v1": 25, "v2": 75}
        assert await on_v2() == by_stage[-2]


@behaviour
async def test_region(tmp_path: Path) -> None:
    """x-region: beijing sees v2; the rest of the country stays on v1."""
    async with serving("region.yaml", tmp_path) as s:
        assert set(await s.versions(50, lambda i: {"x-region": "beijing"})) == {"v2"}
        elsewhere = [{"x-region": "shanghai"}, {"x-region": "Beijing"}, {}]
        for headers in elsewhere:
            assert set(await s.versions(50, lambda i, h=headers: h)) == {"v1"}
        assert (await s.canary())["phase"] == "Idle"


@behaviour
async def test_region__rollout(tmp_path: Path) -> None:
    """The steps canary widens v2: test-user-001 first, then 5 %, a pause until `rollout
    resume`, then 50 % and 100 %; beijing stays on v2 throughout."""
    async with serving("region.yaml", tmp_path, interval="500ms", demo={}) as s:
        others = [f"user-{i}" for i in range(200)]
        await s.cli("rollout", "start", "default")
        async with Load(s, [["test-user-001"]] * 2 + clients(others, 6)):
            c = await s.until_phase("Progressing")
            assert (c["step"], c["weights"]) == (1, {"v1": 100, "v2": 0}), c  # users only
            assert set(await s.versions(20, lambda i: {"user-id": "test-user-001"})) == {"v2"}
            c = await s.until_phase("Paused")
            assert (c["step"], c["weights"]) == (3, {"v1": 95, "v2": 5}), c
            assert set(await s.versions(20, lambda i: {"user-id": "test-user-001"})) == {"v2"}
            await s.cli("rollout", "resume", "default")
            c = await s.until_phase("Succeeded", "Failed")
        assert c["phase"] == "Succeeded" and c["failed_checks"] == 0, c
        assert await s.weights() == {"v1": 0, "v2": 100}
        assert set(await s.versions(40, lambda i: {"user-id": f"user-{i}"})) == {"v2"}
        assert set(await s.versions(20, lambda i: {"x-region": "beijing"})) == {"v2"}


@behaviour
async def test_whitelist(tmp_path: Path) -> None:
    """Test accounts and the office network see v2, everybody else v1; `weights default
    v1=95 v2=5` widens it to 5 % of everybody else."""
    async with serving("whitelist.yaml", tmp_path) as s:
        for user in ("test-user-001", "test-user-002", "qa-lead"):
            assert set(await s.versions(10, lambda i, u=user: {"user-id": u})) == {"v2"}
        for headers in ({"user-id": "test-user-003"}, {}):
            assert set(await s.versions(50, lambda i, h=headers: h)) == {"v1"}
        office = (("10.20.3.4", "testers", "v2"), ("10.21.0.1", "default", "v1"))
        for ip, route, version in office:  # the test's own peer address is 127.0.0.1
            answer = await s.api("POST", "/api/v1/explain", {"path": "/", "client_ip": ip})
            assert (answer["route"], answer["subset"]) == (route, version), answer
        await s.cli("weights", "default", "v1=95", "v2=5")
        seen = await s.versions(2000, lambda i: {"user-id": f"someone-{i}"})
        assert 40 <= seen["v2"] <= 180, seen  # expected 100, sd 9.7
        assert set(await s.versions(10, lambda i: {"user-id": "qa-lead"})) == {"v2"}


@behaviour
async def test_canary(tmp_path: Path) -> None:
    """`rollout start` passes the pre-rollout smoke check against the quick start's v2, then
    steps 5 -> 10 -> 25 -> 50 while the checks pass and promotes v2; a user never moves back
    from v2 to v1 between steps."""
    async with serving("canary.yaml", tmp_path, interval="1s", demo={}) as s:
        v1, v2 = s.backends["v1"].behaviour, s.backends["v2"].behaviour
        await s.cli("rollout", "start", "default")
        c = await s.until_phase("Progressing", "Failed")
        assert (c["phase"], c["failed_checks"], c["weight"]) == ("Progressing", 0, 5), c
        assert (v1.served, v2.served) == (0, 1)  # the smoke request, before any user traffic
        steps: list[float] = []
        async with Load(s, clients([f"user-{i}" for i in range(400)])) as load:
            async with asyncio.timeout(DEADLINE):
                while (c := await s.canary())["phase"] not in ("Succeeded", "Failed"):
                    if not steps or steps[-1] != c["weight"]:
                        steps.append(c["weight"])
                    await asyncio.sleep(0.05)
        assert c["phase"] == "Succeeded" and c["failed_checks"] == 0, c
        assert [w for w in steps if w < 100] == [5, 10, 25, 50]
        assert await s.weights() == {"v1": 0, "v2": 100}
        for user, seen in load.seen.items():
            moved_at = seen.index("v2") if "v2" in seen else len(seen)
            assert set(seen[moved_at:]) <= {"v2"}, user  # once on v2, never back to v1


@behaviour
async def test_canary__rollback(tmp_path: Path) -> None:
    """A v2 that fails 5 % of requests is rolled back to v1 after `threshold` (5) checks."""
    bad = {"v2": Behaviour("v2", error_rate=0.05)}
    async with serving("canary.yaml", tmp_path, interval="1s", demo=bad) as s:
        await s.cli("rollout", "start", "default")
        async with Load(s, clients([f"user-{i}" for i in range(400)])):
            c = await s.until_phase("Succeeded", "Failed")
        assert (c["phase"], c["failed_checks"], c["threshold"]) == ("Failed", 5, 5), c
        assert await s.weights() == {"v1": 100, "v2": 0}
        assert set(await s.versions(40, lambda i: {"user-id": f"user-{i}"})) == {"v1"}


@behaviour
async def test_canary__new_revision(tmp_path: Path) -> None:
    """Bumping `revision` and reloading starts a rollout as `rollout start` does."""
    async with serving("canary.yaml", tmp_path, interval="1s", demo={}) as s:
        assert (await s.canary())["phase"] == "Idle"
        path = Path(s.app.config_path)
        data = yaml.safe_load(path.read_text())
        data["canaries"][0]["revision"] = "2"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        await s.cli("reload")
        c = await s.until_phase("Progressing", "Failed")
        assert (c["phase"], c["failed_checks"], c["weight"]) == ("Progressing", 0, 5), c


@behaviour
async def test_https(tmp_path: Path) -> None:
    """web answers 301 to https on 8443; websecure serves v1 over verified TLS."""
    async with serving("https.yaml", tmp_path) as s:
        async with s.session.get(s.url + "/a?b=1", allow_redirects=False) as r:
            assert r.status == 301
            assert r.headers["Location"] == "https://127.0.0.1:8443/a?b=1"
        ctx = ssl.create_default_context(cafile=str(CONFIG_DIR / "certs" / "example-ca.pem"))
        port = s.app.listener_ports["websecure"]
        reader, writer = await asyncio.open_connection(
            "127.0.0.2", port, ssl=ctx, server_hostname="localhost"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"v1\n")
        assert s.backends["v1"].requests[-1]["headers"]["X-Forwarded-Proto"] == "https"
