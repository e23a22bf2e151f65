"""Retrieve: what WADO-RS (PS3.18 10.4), rendered images and C-MOVE / C-GET read of
the stored instances: their index rows (metadata stored at ingest, frame byte ranges)
and their bytes, through the blob store.

:class:`InstanceCache` keeps recently looked-up instances for the hottest request (one
frame after another of one instance), and is safe with several server processes on
several machines: every change of an instance is announced with PostgreSQL NOTIFY in
the transaction that makes it (:func:`app.index.instances.notify_changed`), and each
process drops its entry when that transaction commits. A short time-to-live bounds
staleness even if the listening connection is lost.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from app.index import retrieve as index_retrieve
from app.index.database import Listener, Pool
from app.index.instances import CHANGED_CHANNEL
from app.index.retrieve import Scope, StoredInstance

#: seconds a looked-up instance serves further requests without another index probe (a
#: cine loop, a slide's tiles), and how many are kept per server process
CACHE_SECONDS = 2.0
CACHE_SIZE = 2048

__all__ = [
    "InstanceCache",
    "Scope",
    "StoredInstance",
    "instance",
    "instances",
    "metadata",
]


async def instance(pool: Pool, scope: Scope) -> StoredInstance:
    """One stored instance (404 if none)."""
    return await index_retrieve.instance(pool, scope)


async def instances(pool: Pool, scope: Scope) -> list[StoredInstance]:
    """The stored instances of a study, series or instance, in PS3.18 10.4 order."""
    return await index_retrieve.instances(pool, scope)


async def metadata(pool: Pool, scope: Scope) -> list[tuple[bytes, str]]:
    """The DICOM JSON stored at ingest for each instance of ``scope``."""
    return await index_retrieve.metadata(pool, scope)


class InstanceCache:
    """Instances by (study, series, SOP Instance UID), for ``ttl`` seconds at most and
    until a change of the instance is announced."""

    def __init__(self, pool: Pool, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE) -> None:
        self.pool = pool
        self.ttl = ttl
        self.size = size
        self._recent: OrderedDict[tuple[str, str, str], tuple[float, StoredInstance]] = (
            OrderedDict()
        )
        self._keys: dict[str, tuple[str, str, str]] = {}
        #: counts announced changes: a lookup that overlapped one is not kept
        self._changes = 0
        self._listener = Listener(pool, CHANGED_CHANNEL, self.forget)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    def forget(self, sop_uid: str) -> None:
        """Drop what is cached of this instance (a change was announced)."""
        self._changes += 1
        key = self._keys.pop(sop_uid, None)
        if key is not None:
            self._recent.pop(key, None)

    async def instance(self, scope: Scope) -> StoredInstance:
        assert scope.series is not None and scope.instance is not None
        key = (scope.study, scope.series, scope.instance)
        now = time.monotonic()
        hit = self._recent.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        changes = self._changes
        inst = await index_retrieve.instance(self.pool, scope)
        if changes != self._changes:
            return inst  # a change was announced meanwhile: this row may predate it
        self._recent[key] = (now + self.ttl, inst)
        self._keys[scope.instance] = key
        self._recent.move_to_end(key)
        while len(self._recent) > self.size:
            old, _ = self._recent.popitem(last=False)
            self._keys.pop(old[2], None)
        return inst
