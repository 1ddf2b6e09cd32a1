"""A small etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/watch`, `/v3/lease/*`).

What the gateway needs that a gRPC client would hide:
- keys and values are base64 in JSON, and int64 fields (revisions, lease IDs, TTLs) are
  strings; proto3 leaves out fields at their default (`succeeded: false`, `type: PUT`,
  an empty `kvs`), so every read here has a default;
- a lease keepalive is one POST each (the gateway's stream gives one answer per request);
- a watch is a long POST whose answer is a stream of JSON objects; it is sent with
  `Grpc-Metadata-hasleader: true` so that a member cut off from the leader cancels it
  instead of going silent, and a watch from a compacted revision is cancelled with
  `compact_revision` set (`Compacted`): the caller must read the prefix again.

Every call tries the endpoints in turn, starting at the last one that answered; a member
that cannot be reached, or answers 5xx, sends the call to the next. `Unavailable` means
none answered.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger("canaryproxy.store")


class Unavailable(Exception):
    """No etcd endpoint answered."""


class Uncertain(Unavailable):
    """A write was sent and no answer came back: it may or may not have been applied."""


class Compacted(Exception):
    """The watch's start revision has been compacted away: read the prefix again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {revision})")
        self.revision = revision


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return b64(bytes(raw))
        raw.pop()
    return b64(b"\0")


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @staticmethod
    def of(d: dict) -> KV:
        return KV(
            unb64(d.get("key", "")).decode(),
            unb64(d.get("value", "")),
            int(d.get("create_revision", 0)),
            int(d.get("mod_revision", 0)),
            int(d.get("version", 0)),
            int(d.get("lease", 0)),
        )

    def json(self) -> Any:
        return json.loads(self.value)


@dataclass(frozen=True)
class Event:
    deleted: bool
    kv: KV


@dataclass(frozen=True)
class Batch:
    """What one watch answer carries: every event of one or more whole revisions."""

    revision: int  # the store's revision when the answer was sent
    events: tuple[Event, ...]


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict] = field(default_factory=list)

    def ranges(self) -> list[list[KV]]:
        """The kvs of each range op in the branch that ran, in order."""
        out = []
        for r in self.responses:
            rr = r.get("response_range")
            if rr is not None:
                out.append([KV.of(kv) for kv in rr.get("kvs", [])])
        return out


# -- request pieces (plain dicts, as the gateway wants them) --------------------------------


def cmp_create(key: str, revision: int) -> dict:
    """`create_revision(key) == revision` (0: the key does not exist)."""
    return {
        "key": b64(key),
        "target": "CREATE",
        "result": "EQUAL",
        "create_revision": str(revision),
    }


def cmp_mod(key: str, revision: int) -> dict:
    """`mod_revision(key) == revision` (0: the key does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_put(key: str, value: Any, lease: int = 0) -> dict:
    raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True).encode()
    put: dict[str, Any] = {"key": b64(key), "value": b64(raw)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def op_delete(key: str) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def op_range(key: str) -> dict:
    return {"request_range": {"key": b64(key)}}


class Etcd:
    """The calls the fleet needs; `endpoints` are "host:port" (http)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in endpoints]
        self.timeout = timeout
        self._next = 0  # the endpoint that answered last: tried first
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._next + i) % n for i in range(n)]

    async def call(
        self, path: str, body: dict, timeout: float | None = None, idempotent: bool = True
    ) -> dict:
        """POST `body` to `path` on the first endpoint that answers. A call that is not
        `idempotent` goes to the next endpoint only when it was never sent (no connection);
        once sent, a lost answer raises Uncertain."""
        last = "no endpoint tried"
        wait = aiohttp.ClientTimeout(total=timeout or self.timeout)
        for i in self._order():
            url = self.endpoints[i] + path
            try:
                async with self.session().post(url, json=body, timeout=wait) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status >= 500 or not isinstance(data, dict):
                        last = f"{url}: HTTP {resp.status} {str(data)[:200]}"
                        continue
                    if resp.status >= 400:
                        raise ValueError(f"{url}: HTTP {resp.status}: {data.get('error', data)}")
                    self._next = i
                    return data
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                last = f"{url}: {exc.__class__.__name__} {exc}"
                if not idempotent and not isinstance(exc, aiohttp.ClientConnectorError):
                    self._next = (i + 1) % len(self.endpoints)
                    raise Uncertain(last) from None
        self._next = (self._next + 1) % len(self.endpoints)
        raise Unavailable(last)

    # -- kv -------------------------------------------------------------------------------

    async def range_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[KV]]:
        """(store revision, every key under `prefix`), linearizable."""
        body: dict[str, Any] = {"key": b64(prefix), "range_end": prefix_end(prefix)}
        if revision:
            body["revision"] = str(revision)
        data = await self.call("/v3/kv/range", body)
        kvs = [KV.of(kv) for kv in data.get("kvs", [])]
        return int(data["header"]["revision"]), kvs

    async def get(self, key: str) -> KV | None:
        data = await self.call("/v3/kv/range", {"key": b64(key)})
        kvs = data.get("kvs", [])
        return KV.of(kvs[0]) if kvs else None

    async def put(self, key: str, value: Any, lease: int = 0) -> int:
        data = await self.call("/v3/kv/put", op_put(key, value, lease)["request_put"])
        return int(data["header"]["revision"])

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": b64(key)}, timeout=1.0)

    async def txn(self, compare: list[dict], success: list[dict], failure: list[dict]) -> TxnResult:
        """One transaction. Not resent once it may have been applied (an answer lost on
        the way back raises Uncertain): the caller re-reads and decides."""
        body = {"compare": compare, "success": success, "failure": failure}
        data = await self.call("/v3/kv/txn", body, idempotent=False)
        return TxnResult(
            bool(data.get("succeeded", False)),
            int(data["header"]["revision"]),
            list(data.get("responses", [])),
        )

    # -- leases ---------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        data = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(data["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; its TTL left (0 or less: it has expired)."""
        data = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = data.get("result", data)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)}, timeout=1.0)
        except (Unavailable, ValueError):
            pass  # it expires on its own

    # -- watch ----------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Batch]:
        """Events under `prefix` from `start_revision` on, a whole revision at a time.

        Ends (returns) when the stream ends; raises Compacted, Unavailable. The caller
        resumes from the revision after the last one it applied, on whichever endpoint.
        """
        create = {
            "create_request": {
                "key": b64(prefix),
                "range_end": prefix_end(prefix),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        headers = {"Grpc-Metadata-hasleader": "true"}
        last = "no endpoint tried"
        for i in self._order():
            url = self.endpoints[i] + "/v3/watch"
            wait = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=None)
            try:
                async with self.session().post(
                    url, json=create, headers=headers, timeout=wait
                ) as r:
                    if r.status != 200:
                        last = f"{url}: HTTP {r.status}"
                        continue
                    self._next = i
                    async for batch in _batches(r):
                        yield batch
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{url}: {exc.__class__.__name__} {exc}"
        raise Unavailable(last)


async def _batches(resp: aiohttp.ClientResponse) -> AsyncIterator[Batch]:
    """The gateway writes one JSON object per answer, each on its own line."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                batch = _batch(json.loads(line))
                if batch is not None:
                    yield batch


def _batch(msg: dict) -> Batch | None:
    if "error" in msg:
        raise Unavailable(f"watch: {msg['error']}")
    result = msg.get("result", {})
    compact = int(result.get("compact_revision", 0))
    if compact:
        raise Compacted(compact)
    if result.get("canceled"):
        raise Unavailable(f"watch cancelled: {result.get('cancel_reason', 'no reason given')}")
    if result.get("created") and not result.get("events"):
        return None
    revision = int(result.get("header", {}).get("revision", 0))
    events = tuple(
        Event(e.get("type") == "DELETE", KV.of(e.get("kv", {}))) for e in result.get("events", [])
    )
    return Batch(revision, events)
