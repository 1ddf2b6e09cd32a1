"""The dashboard page in a real headless Chromium, against the real App and canary manager.

Driven through chromedriver's W3C WebDriver HTTP API with urllib (no extra dependency).
Blocking WebDriver calls run in a thread so the App keeps serving on the test's loop.
Set DASHBOARD_SCREENSHOT=PATH to keep a screenshot of the live page (docs/dashboard.png).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import App
from proxy.demo_upstream import Behaviour, Upstream
from proxy.metrics import SeriesRing

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
TOKEN_ENV = "CANARYPROXY_DASHBOARD_TEST_TOKEN"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and shutil.which("chromedriver")), reason="chromium not installed"
)


class WebDriver:
    """The few W3C WebDriver commands the tests need, over plain HTTP."""

    def __init__(self, base: str, session: str) -> None:
        self.base, self.session = base, session

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.base}/session/{self.session}{path}"
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {json.load(exc)['value']}") from None

    def find(self, css: str) -> str | None:
        found = self.cmd("POST", "/elements", {"using": "css selector", "value": css})
        return found[0][ELEMENT] if found else None

    def text(self, css: str) -> str:
        eid = self.find(css)
        return self.cmd("GET", f"/element/{eid}/text") if eid else ""

    def alert_text(self) -> str | None:
        try:
            return self.cmd("GET", "/alert/text")
        except AssertionError:
            return None

    def console(self) -> list[dict]:
        return self.cmd("POST", "/se/log", {"type": "browser"})

    def script(self, js: str) -> Any:
        """Run `js` in the page and return its value: several reads of one rendering."""
        return self.cmd("POST", "/execute/sync", {"script": js, "args": []})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromedriver() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/status", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "chromedriver did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def browser(chromedriver: str) -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="canaryproxy-chromium-")
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1100"]  # fmt: skip
    caps = {"browserName": "chrome", "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}}  # fmt: skip
    req = urllib.request.Request(
        chromedriver + "/session",
        data=json.dumps({"capabilities": {"alwaysMatch": caps}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        session = json.load(r)["value"]["sessionId"]
    driver = WebDriver(chromedriver, session)
    try:
        yield driver
    finally:
        urllib.request.urlopen(
            urllib.request.Request(f"{chromedriver}/session/{session}", method="DELETE"), timeout=30
        ).close()
        shutil.rmtree(profile, ignore_errors=True)


CONFIG = """
listen: 127.0.0.1:0
admin: {{listen: "127.0.0.1:0", token_env: {token_env}}}
access_log: false
upstreams:
  v1: {{endpoints: ["{v1}"]}}
  v2: {{endpoints: ["{v2}"]}}
routes:
  - name: default
    service: orders
    route: [{{destination: v1, weight: 100}}, {{destination: v2, weight: 0}}]
canaries:
  - name: web
    route: default
    stable: v1
    canary: v2
    analysis:
      interval: 2s
      threshold: 5
      step_weight: 5
      max_weight: 50
      min_requests: 5
      metrics:
        - {{name: request-success-rate, min: 99}}
        - {{name: request-duration, max: 500}}
"""


class Rig:
    def __init__(self, app: App, session: aiohttp.ClientSession, token: str) -> None:
        self.app, self.session, self.token = app, session, token

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.app.admin_port}"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.session.request(method, self.admin + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def load(self) -> None:
        """Steady traffic, so the charts and the analysis have data."""
        url = f"http://127.0.0.1:{self.app.proxy_port}/"
        while True:
            async with self.session.get(url) as r:
                await r.read()
            await asyncio.sleep(0.02)


async def _rig(
    tmp: pathlib.Path, token: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    monkeypatch.setenv(TOKEN_ENV, token)
    v1, v2 = Upstream(Behaviour("v1")), Upstream(Behaviour("v2"))
    await v1.start()
    await v2.start()
    (tmp / "config.yaml").write_text(
        CONFIG.format(token_env=TOKEN_ENV, v1=v1.address, v2=v2.address)
    )
    app = App(str(tmp / "config.yaml"), str(tmp / "state"))
    await app.start()
    session = aiohttp.ClientSession()
    rig = Rig(app, session, token)
    load = asyncio.create_task(rig.load())
    try:
        yield rig
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await session.close()
        await app.stop()
        await v1.stop()
        await v2.stop()


@pytest.fixture
async def open_rig(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, "", monkeypatch):
        yield rig


@pytest.fixture
async def token_rig(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, "s3cret-token", monkeypatch):
        yield rig


async def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll a blocking check (in a thread) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def _severe(logs: list[dict], allow: str = "") -> list[dict]:
    return [e for e in logs if e["level"] == "SEVERE" and not (allow and allow in e["message"])]


async def test_page_loads_clean_and_shows_weights_changed_through_the_api(
    browser: WebDriver, open_rig: Rig
) -> None:
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": open_rig.admin + "/"})
    bar = '[data-route="default"] .bar'
    await eventually(lambda: "v1 100%" in browser.text(bar), "initial weights")
    assert await asyncio.to_thread(browser.text, '[data-canary="web"] .phase') == "Idle"
    assert "healthy" in await asyncio.to_thread(browser.text, '#upstreams [data-upstream="v2"]')
    status, _ = await open_rig.call("PUT", "/api/v1/routes/default/weights", {"v1": 70, "v2": 30})
    assert status == 200
    await eventually(lambda: "v2 30%" in browser.text(bar), "new weights")
    assert "v1 70%" in await asyncio.to_thread(browser.text, bar)
    await eventually(
        lambda: browser.text('[data-route="default"] tr[data-version="v1"]') != "", "rows"
    )
    assert _severe(await asyncio.to_thread(browser.console)) == []


async def test_abort_click_rolls_a_running_canary_back(browser: WebDriver, open_rig: Rig) -> None:
    status, body = await open_rig.call("POST", "/api/v1/canaries/web/start")
    assert status == 200, body
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": open_rig.admin + "/"})
    card = '[data-canary="web"]'
    await eventually(lambda: browser.text(card + " .phase") == "Progressing", "Progressing")
    await eventually(lambda: "v2 " in browser.text('[data-route="default"] .bar'), "canary traffic")
    await _maybe_screenshot(browser)
    abort = await asyncio.to_thread(browser.find, card + ' button[data-verb="abort"]')
    await asyncio.to_thread(browser.cmd, "POST", f"/element/{abort}/click")
    confirm = await eventually(browser.alert_text, "the abort confirmation")
    assert "roll all traffic back" in confirm
    await asyncio.to_thread(browser.cmd, "POST", "/alert/accept")
    await eventually(lambda: browser.text(card + " .phase") == "Failed", "Failed in the page")
    _, status_json = await open_rig.call("GET", "/api/v1/status")
    (canary,) = status_json["canaries"]
    assert canary["phase"] == "Failed"
    assert status_json["routes"][0]["weights"]["v2"] == 0
    await eventually(
        lambda: "v2 " not in browser.text('[data-route="default"] .bar'), "bar rollback"
    )
    assert _severe(await asyncio.to_thread(browser.console)) == []


async def test_token_is_asked_once_and_sent_with_every_call(
    browser: WebDriver, token_rig: Rig
) -> None:
    async with token_rig.session.get(token_rig.admin + "/") as r:
        if r.status == 401:
            pytest.skip("the admin API serves / only with a token: '/' must join admin.OPEN_PATHS")
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": token_rig.admin + "/"})
    prompt = await eventually(browser.alert_text, "the token prompt")
    assert "token" in prompt.lower()
    await asyncio.to_thread(browser.cmd, "POST", "/alert/text", {"text": token_rig.token})
    await asyncio.to_thread(browser.cmd, "POST", "/alert/accept")
    card = '[data-canary="web"]'
    await eventually(lambda: browser.text(card + " .phase") == "Idle", "status with the token")
    start = await asyncio.to_thread(browser.find, card + ' button[data-verb="start"]')
    await asyncio.to_thread(browser.cmd, "POST", f"/element/{start}/click")
    await eventually(
        lambda: browser.text(card + " .phase") == "Progressing", "started from the page"
    )
    assert await asyncio.to_thread(browser.alert_text) is None  # asked once only
    # the one expected console entry is the first, unauthenticated request
    assert _severe(await asyncio.to_thread(browser.console), allow="401") == []


async def _maybe_screenshot(browser: WebDriver) -> None:
    target = os.environ.get("DASHBOARD_SCREENSHOT")
    if not target:
        return
    await asyncio.sleep(20)  # let the charts and the analysis fill in
    png = await asyncio.to_thread(browser.cmd, "GET", "/screenshot")
    pathlib.Path(target).write_bytes(base64.b64decode(png))


@pytest.fixture
async def sparse_status() -> AsyncIterator[str]:
    """The page served beside a status JSON with most fields missing (older or newer proxy)."""
    page = (pathlib.Path(__file__).parent.parent / "proxy" / "dashboard.html").read_text()
    body = {"routes": [{"name": "bare"}], "canaries": [{"name": "c1", "steps": [{"kind": "x"}]}],
            "upstreams": [{"name": "u1", "endpoints": [{"address": "127.0.0.1:1", "healthy": False}]}]}  # fmt: skip

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(body)

    async def series(_: web.Request) -> web.Response:
        return web.json_response({"series": [5, {"route": "bare"}, {"route": "bare", "version": "v1",
                                  "points": [[1, 2], "x", [None]]}]})  # fmt: skip

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/series", series)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_missing_status_fields_render_without_errors(
    browser: WebDriver, sparse_status: str
) -> None:
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": sparse_status})
    await eventually(lambda: browser.text('[data-canary="c1"] .phase') == "Idle", "canary card")
    assert "unhealthy" in await asyncio.to_thread(browser.text, '#upstreams [data-upstream="u1"]')
    assert await asyncio.to_thread(browser.find, '[data-route="bare"] .bar')
    assert _severe(await asyncio.to_thread(browser.console)) == []


# Read in one go, so the card and the bar come from the same rendering of one status.
CARD_AND_BAR = """
const card = document.querySelector('[data-canary="web"]');
const bar = document.querySelector('[data-route="default"] .bar span[data-version="v2"]');
const override = card && card.querySelector('.override');
return {card: card && card.querySelector('.weight') ? card.querySelector('.weight').textContent : null,
        override: override ? override.textContent : null,
        bar: bar ? bar.textContent : "v2 0%",
        phase: card ? card.querySelector('.phase').textContent : null};
"""


async def _shows(browser: WebDriver, what: str, **want: str | None) -> dict:
    """Wait for the card and bar to show `want`; in every rendering on the way they agree."""
    deadline = time.monotonic() + 15
    while True:
        seen = await asyncio.to_thread(browser.script, CARD_AND_BAR)
        if seen["card"] is not None:  # rendered
            card = seen["card"].removeprefix("canary weight ")
            assert card == seen["bar"].removeprefix("v2 "), seen
            if all(seen[k] == v for k, v in want.items()):
                return seen
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {seen}"
        await asyncio.sleep(0.2)


async def test_canary_card_and_weight_bar_agree_after_manual_changes(
    browser: WebDriver, open_rig: Rig
) -> None:
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": open_rig.admin + "/"})
    await _shows(browser, "idle", card="canary weight 0%", override=None, phase="Idle")
    status, _ = await open_rig.call("PUT", "/api/v1/routes/default/weights", {"v1": 70, "v2": 30})
    assert status == 200
    seen = await _shows(browser, "a manual 30 %", bar="v2 30%")
    assert seen["override"] == "manual override: step weight 0%"

    status, body = await open_rig.call("POST", "/api/v1/canaries/web/start")
    assert status == 200, body
    await _shows(browser, "the first step", card="canary weight 5%", override=None)
    status, body = await open_rig.call("POST", "/api/v1/canaries/web/pause")
    assert status == 200, body
    await _shows(browser, "paused", phase="Paused")
    # relative weights: 1 and 2 are a third and two thirds
    status, _ = await open_rig.call("PUT", "/api/v1/routes/default/weights", {"v1": 1, "v2": 2})
    assert status == 200
    seen = await _shows(browser, "a manual 2/3", bar="v2 66.7%")
    assert seen["override"] == "manual override: step weight 5%"
    status, _ = await open_rig.call("POST", "/api/v1/routes/default/switch", {"to": "v2"})
    assert status == 200
    seen = await _shows(browser, "the switch", bar="v2 100%")
    assert seen["override"] == "manual override: step weight 5%"
    assert _severe(await asyncio.to_thread(browser.console)) == []


async def test_a_fresh_page_shows_the_history_the_proxy_kept(
    browser: WebDriver, open_rig: Rig
) -> None:
    # As if the proxy had been sampling for 3 minutes: 36 points, 5 s apart, per version.
    ring = SeriesRing()
    now = time.time()
    for i in range(36, 0, -1):
        ring.add(now - 5 * i, {("default", "v1"): (20.0, 0.0, 12.0),
                                  ("default", "v2"): (2.0, 5.0, 420.0)})  # fmt: skip
    open_rig.app.metrics.history = ring
    _, served = await open_rig.call("GET", "/api/v1/series")
    assert [len(s["points"]) for s in served["series"]] == [36, 36]
    await asyncio.to_thread(browser.cmd, "POST", "/url", {"url": open_rig.admin + "/"})
    charts = '[data-route="default"] canvas'
    drawn = await eventually(
        lambda: browser.script(
            f"return [...document.querySelectorAll('{charts}')].map((c) => c.dataset);"
        ),
        "the charts",
    )
    assert [c["metric"] for c in drawn] == ["rps", "err", "p99"]
    for chart in drawn:
        # both versions' 36 points from before the page was opened (and perhaps live ones)
        assert int(chart["points"]) >= 72, chart
        assert float(chart["oldest"]) <= (now - 5 * 36) * 1000 + 1000, chart
    assert _severe(await asyncio.to_thread(browser.console)) == []
