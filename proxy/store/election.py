"""One controller per fleet: an etcd lease election whose leader key is the fencing token.

Every replica campaigns: it holds a lease (TTL `ttl`, kept alive every TTL/3) and tries to
create the leader key bound to it (`create_revision == 0` in a transaction). The winner's
key's create_revision is the **epoch**. Each controller write carries the guard
`create_revision(leader key) == epoch`, which etcd checks inside the same transaction, so a
deposed leader (its lease expired: killed, paused, cut off) can write nothing even if it does
not know yet that it was deposed.

A leader steps down at once when a keepalive says the lease is gone, when no keepalive has
succeeded for most of the TTL (it cannot know the lease is still alive), or when the
leader key it sees is not its own; then it campaigns again with a new lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from proxy.store.etcd import Unavailable, Uncertain, cmp_create, op_put, op_range
from proxy.store.fleet import FleetStore

log = logging.getLogger("canaryproxy.fleet")
SAFETY = 0.8  # a leader without a successful keepalive for SAFETY x TTL steps down


class Election:
    def __init__(self, store: FleetStore, me: dict, ttl: float = 5.0) -> None:
        self.store, self.me, self.ttl = store, me, ttl
        self.epoch = 0  # > 0 while this replica leads
        self._poke = asyncio.Event()

    @property
    def key(self) -> str:
        return self.store.keys.leader

    def guard(self) -> dict:
        """The fence every controller write carries."""
        return cmp_create(self.key, self.epoch)

    def leader(self) -> tuple[int, dict | None]:
        doc = self.store.snapshot.get(self.key)
        return (doc.create_revision, doc.value) if doc is not None else (0, None)

    def poke(self) -> None:
        """The leader key changed in the snapshot."""
        self._poke.set()

    async def run(
        self,
        elected: Callable[[int], Awaitable[None]],
        deposed: Callable[[str], Awaitable[None]],
    ) -> None:
        etcd = self.store.etcd
        while True:
            try:
                lease = await etcd.grant(max(1, round(self.ttl)))
            except (Unavailable, ValueError):
                await asyncio.sleep(min(1.0, self.ttl / 3))
                continue
            renewed = time.monotonic()
            epoch = await self._campaign(lease, renewed)
            if not epoch:
                continue
            self.epoch = epoch
            log.info("fleet: %s leads the controller (epoch %d)", self.me.get("replica"), epoch)
            try:
                await elected(epoch)
                why = await self._hold(lease)
            finally:
                self.epoch = 0
            log.warning(
                "fleet: %s stops leading (epoch %d): %s", self.me.get("replica"), epoch, why
            )
            await deposed(why)
            await etcd.revoke(lease)  # frees the key at once when etcd still has it

    async def _campaign(self, lease: int, renewed: float) -> int:
        """Try for the key while the lease lives; the epoch won, or 0 (get a new lease)."""
        etcd = self.store.etcd
        while True:
            if self.leader()[1] is None:
                try:
                    res = await etcd.txn(
                        [cmp_create(self.key, 0)],
                        [op_put(self.key, self.me, lease)],
                        [op_range(self.key)],
                    )
                except (Unavailable, Uncertain, ValueError):
                    await asyncio.sleep(min(1.0, self.ttl / 3))
                    return 0
                if res.succeeded:
                    await self.store.applied(res.revision, timeout=1.0)
                    return res.revision
            self._poke.clear()
            try:
                await asyncio.wait_for(self._poke.wait(), self.ttl / 3)
            except TimeoutError:
                pass
            try:
                if await etcd.keepalive(lease) <= 0:
                    return 0
                renewed = time.monotonic()
            except (Unavailable, ValueError):
                if time.monotonic() - renewed > SAFETY * self.ttl:
                    return 0

    async def _hold(self, lease: int) -> str:
        """Keep the lease alive until leadership ends; why it ended."""
        etcd = self.store.etcd
        renewed = time.monotonic()
        while True:
            self._poke.clear()
            try:
                await asyncio.wait_for(self._poke.wait(), self.ttl / 3)
            except TimeoutError:
                pass
            if time.monotonic() - renewed > SAFETY * self.ttl:
                return "no keepalive answered for most of the lease's TTL"
            created, doc = self.leader()
            if self.store.watching and created != self.epoch:
                return "the leader key is not ours any more"
            sent = time.monotonic()
            try:
                if await etcd.keepalive(lease) <= 0:
                    return "the lease expired"
                renewed = sent
            except (Unavailable, ValueError):
                continue
