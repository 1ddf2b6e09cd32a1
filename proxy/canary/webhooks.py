"""Webhooks (Flagger semantics) and alerts, over one shared aiohttp ClientSession.

- A hook passes when it answers 2xx within its timeout (default 10 s); any error is a fail.
- Gates (confirm-*) are polled by the runner every interval until they pass.
- Alerts are fire-and-forget tasks kept in a set: a slow or failing alert endpoint never
  blocks or fails a rollout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp

from proxy.config.schema import Alert, Webhook
from proxy.tasks import spawn

log = logging.getLogger("canaryproxy.canary")


def alert_body(kind: str, text: str) -> dict[str, Any]:
    """The JSON body each alert type expects."""
    if kind == "slack":
        return {"text": text}
    if kind == "dingtalk":
        return {"msgtype": "text", "text": {"content": text}}
    return {"text": text}


def idempotency(payload: dict[str, Any], hook: str) -> dict[str, str]:
    """`Idempotency-Key: <rollout>/<step>/<hook>` (and the controller's epoch in a fleet): a
    receiver can tell a call repeated by a new leader from a new one."""
    if "rollout" not in payload:
        return {}
    headers = {"Idempotency-Key": f"{payload['rollout']}/{payload.get('step', 0)}/{hook}"}
    if payload.get("epoch"):
        headers["X-Canaryproxy-Epoch"] = str(payload["epoch"])
    return headers


async def call(session: aiohttp.ClientSession, hook: Webhook, payload: dict[str, Any]) -> bool:
    """POST the payload (plus the hook's metadata); True on a 2xx answer."""
    body = {**payload, "type": hook.type, "metadata": dict(hook.metadata)}
    headers = idempotency(payload, hook.name)
    try:
        timeout = aiohttp.ClientTimeout(total=hook.timeout)
        async with session.post(hook.url, json=body, timeout=timeout, headers=headers) as resp:
            await resp.read()
            ok = 200 <= resp.status < 300
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        log.info("webhook %s (%s) failed: %s", hook.name, hook.type, e)
        return False
    if not ok:
        log.info("webhook %s (%s) answered %s", hook.name, hook.type, resp.status)
    return ok


async def run_type(
    session: aiohttp.ClientSession, hooks: Iterable[Webhook], kind: str, payload: dict[str, Any]
) -> bool | None:
    """All hooks of one type, concurrently; None when there are none, else all passed."""
    selected = [h for h in hooks if h.type == kind]
    if not selected:
        return None
    results = await asyncio.gather(*(call(session, h, payload) for h in selected))
    return all(results)


async def any_pass(
    session: aiohttp.ClientSession, hooks: Iterable[Webhook], kind: str, payload: dict[str, Any]
) -> bool:
    """True when at least one hook of the type answers 2xx (rollback hooks)."""
    selected = [h for h in hooks if h.type == kind]
    if not selected:
        return False
    results = await asyncio.gather(*(call(session, h, payload) for h in selected))
    return any(results)


class Notifier:
    """Alerts and `event` webhooks in background tasks that nobody awaits on the rollout path."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()

    def fire(self, coro: Any) -> None:
        spawn(coro, "canary-notify", self._tasks)

    def alert(
        self, alerts: Iterable[Alert], text: str, payload: dict[str, Any] | None = None
    ) -> None:
        for a in alerts:
            self.fire(self._post(a, text, idempotency(payload or {}, f"alert-{a.type}")))

    def event(self, hooks: Iterable[Webhook], payload: dict[str, Any]) -> None:
        for h in hooks:
            if h.type == "event":
                self.fire(call(self._session, h, payload))

    async def _post(self, a: Alert, text: str, headers: dict[str, str]) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with self._session.post(
                a.url, json=alert_body(a.type, text), timeout=timeout, headers=headers
            ) as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.info("alert %s to %s failed: %s", a.type, a.url, e)

    async def close(self) -> None:
        """Give pending notifications a moment, then cancel the rest."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
