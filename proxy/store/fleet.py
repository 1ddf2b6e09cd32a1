"""The fleet's state in etcd as one replica sees it: a snapshot of the prefix, kept current
by a watch, and the transactions that change it.

- `load` reads the prefix at revision R; `run` watches from R+1 and applies each answer
  (one or more whole transactions) to the snapshot at once, then tells `on_change` which
  keys moved. A broken watch resumes from the revision after the last one applied, on the
  next endpoint; a compacted start revision re-reads the prefix.
- Traffic never waits on any of this: the snapshot is what the replica serves while etcd
  is away, and `stale_seconds` says for how long it has not heard from etcd.
- `write` is the one way anything is changed: a transaction guarded by the head key's
  mod_revision (and whatever fences the caller adds), appending a log entry. It returns once
  this replica has applied the transaction, so an API answer means "in force here".
- The read side of the state dir's interface (`head`, `history`, `get`, `load_routing`,
  `load_canary_state`) answers from the snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from proxy.state import RoutingState
from proxy.store import Conflict, StoreDown
from proxy.store.etcd import (
    KV,
    Batch,
    Compacted,
    Etcd,
    Unavailable,
    Uncertain,
    cmp_mod,
    op_delete,
    op_put,
    op_range,
)
from proxy.store.keys import MAX_LOG, Doc, Keys, StoreURL, head_of, history, routing_of

log = logging.getLogger("canaryproxy.fleet")
STALE_AFTER = 2.0  # seconds without word from etcd before the replica counts itself stale


class Fenced(Exception):
    """A guard other than the head failed (a deposed leader's write): nothing written."""


def _doc(kv: KV) -> Doc:
    try:
        value = kv.json()
    except ValueError:
        value = None
    return Doc(value, kv.mod_revision, kv.create_revision)


class FleetStore:
    def __init__(self, url: StoreURL, replica: str) -> None:
        self.url, self.replica = url, replica
        self.etcd = Etcd(url.endpoints)
        self.keys = Keys(url.cluster)
        self.dir = str(url)  # where the state lives, for the status and the logs
        self.snapshot: dict[str, Doc] = {}
        self.revision = 0  # the store revision the snapshot is at
        self.on_change: Callable[[set[str]], None] = lambda keys: None
        self.last_contact: float | None = None  # monotonic time etcd last answered
        self.watching = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    # -- reading ------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the whole prefix (raises Unavailable)."""
        revision, kvs = await self.etcd.range_prefix(self.keys.prefix)
        self.snapshot = {kv.key: _doc(kv) for kv in kvs}
        self.revision = revision
        self.contact()

    def contact(self) -> None:
        self.last_contact = time.monotonic()

    def stale_seconds(self) -> float:
        if self.last_contact is None:
            return 0.0
        quiet = time.monotonic() - self.last_contact
        return quiet if quiet >= STALE_AFTER or not self.watching else 0.0

    async def run(self) -> None:
        """Watch forever; every answer is applied whole."""
        attempt = 0
        while True:
            if self.revision == 0:  # never read (etcd was away at start): read first
                await self._reload()
                continue
            try:
                self.watching = True
                async for batch in self.etcd.watch(self.keys.prefix, self.revision + 1):
                    attempt = 0
                    self._apply(batch)
                self.watching = False
            except Compacted as exc:
                log.warning("fleet store: %s; reading the prefix again", exc)
                await self._reload()
            except (Unavailable, ValueError) as exc:
                self.watching = False
                if attempt == 0:
                    log.warning("fleet store: watch broken (%s); serving the last state", exc)
                attempt += 1
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            except Exception:
                self.watching = False
                log.exception("fleet store: watch failed; retrying")
                await asyncio.sleep(1.0)

    async def _reload(self) -> None:
        try:
            old = self.snapshot
            await self.load()
        except Unavailable:
            await asyncio.sleep(0.5)
            return
        changed = {
            k for k in old.keys() | self.snapshot.keys() if old.get(k) != self.snapshot.get(k)
        }
        self._changed(changed)

    def _apply(self, batch: Batch) -> None:
        self.contact()
        changed: set[str] = set()
        for ev in batch.events:
            if ev.deleted:
                self.snapshot.pop(ev.kv.key, None)
            else:
                self.snapshot[ev.kv.key] = _doc(ev.kv)
            changed.add(ev.kv.key)
        # the events' own revisions; an answer without events is a progress notice: all up
        # to its header revision has been sent
        last = max((ev.kv.mod_revision for ev in batch.events), default=batch.revision)
        self.revision = max(self.revision, last)
        if changed:
            self._changed(changed)
        self._wake_waiters()

    def _changed(self, keys: set[str]) -> None:
        try:
            self.on_change(keys)
        except Exception:
            log.exception("fleet store: applying a change failed")

    def _wake_waiters(self) -> None:
        keep = []
        for rev, fut in self._waiters:
            if self.revision >= rev:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((rev, fut))
        self._waiters = keep

    async def applied(self, revision: int, timeout: float = 2.0) -> bool:
        """Wait until the snapshot holds `revision`; False after `timeout` s."""
        if self.revision >= revision:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((revision, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    # -- the state dir's read interface ---------------------------------------------------

    def head(self) -> int:
        return head_of(self.snapshot, self.keys)[0]

    def history(self) -> list[dict]:
        return history(self.snapshot, self.keys)

    def get(self, n: int) -> dict | None:
        doc = self.snapshot.get(self.keys.log(n))
        return doc.value if doc is not None else None

    def load_routing(self) -> RoutingState:
        return routing_of(self.snapshot, self.keys)

    def save_routing(self, state: RoutingState) -> None:
        """Routing is written by `write`, with its log entry, in one transaction."""

    def load_canary_state(self, name: str) -> dict | None:
        doc = self.snapshot.get(self.keys.canary(name))
        return doc.value if doc is not None and isinstance(doc.value, dict) else None

    def canary_revision(self, name: str) -> int:
        doc = self.snapshot.get(self.keys.canary(name))
        return doc.mod_revision if doc is not None else 0

    def record(self, cause: str, weights: Any, canary_match: Any = None) -> dict:
        """The log is appended by `write`; a replica never numbers a revision alone."""
        return self.get(self.head()) or {}

    def save_canary_state(self, name: str, state: dict) -> None:
        raise RuntimeError("in fleet mode canary state is written by the controller's step")

    def flush(self) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.etcd.close()

    # -- writing --------------------------------------------------------------------------

    async def write(
        self,
        puts: list[tuple[str, Any]],
        deletes: list[str],
        entry: dict | None,
        guards: list[dict] | None = None,
    ) -> tuple[int, dict]:
        """One transaction: `puts` and `deletes`, plus (with `entry`) the next log revision.

        Guarded by the head's mod_revision and `guards`. Returns (store revision, log
        entry) once applied here. Raises Conflict (the head moved: re-read and retry),
        Fenced (another guard failed), StoreDown.
        """
        number, head_mod = head_of(self.snapshot, self.keys)
        k = self.keys
        txid = uuid.uuid4().hex
        ops = [op_put(key, doc) for key, doc in puts] + [op_delete(key) for key in deletes]
        if entry is not None:
            number += 1
            entry = {
                "revision": number,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "who": self.replica,
                **entry,
            }
            ops += [
                op_put(k.head, {"revision": number, "txid": txid}),
                op_put(k.log(number), entry),
            ]
            if number > MAX_LOG:
                ops.append(op_delete(k.log(number - MAX_LOG)))
        head_guard = [cmp_mod(k.head, head_mod)] if entry is not None else []
        compares = [*head_guard, *(guards or [])]
        try:
            res = await self.etcd.txn(compares, ops, [op_range(k.head)])
        except Uncertain as exc:
            if await self._landed(txid):
                return self.revision, entry or {}
            raise StoreDown(
                f"the fleet store did not answer ({exc}); the change may not be in force"
            ) from None
        except Unavailable as exc:
            raise StoreDown(f"the fleet store cannot be reached ({exc}); nothing changed") from None
        self.contact()
        if not res.succeeded:
            (head,) = res.ranges() or [[]]
            moved = (head[0].mod_revision if head else 0) != head_mod
            if moved and entry is not None:
                await self.applied(head[0].mod_revision if head else 0, timeout=1.0)
                raise Conflict("another replica changed the routing state first; try again")
            raise Fenced("the write's guard failed")
        if self.watching:
            await self.applied(res.revision)
        else:  # no watch to bring it back (starting, or etcd was away): read it
            await self._reload()
        return res.revision, entry or {}

    async def _landed(self, txid: str) -> bool:
        """After an unanswered transaction: did it commit (its txid is in the head)?"""
        for _ in range(5):
            try:
                kv = await self.etcd.get(self.keys.head)
            except Unavailable:
                await asyncio.sleep(0.3)
                continue
            if kv is not None and kv.json().get("txid") == txid:
                await self.applied(kv.mod_revision)
                return True
            return False
        return False
