"""Events out of the archive (issue #17): the change feed.

Every server process runs a :class:`FeedMover`: told by the index when a transaction
has left changes (LISTEN ``pictor_feed``), and every second anyway, it numbers the
committed changes into the feed (:func:`app.index.feed.move`; one mover at a time
across processes and nodes, the others skip). The feed itself is read with
:func:`read` and :func:`latest`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from app.index import feed as index_feed
from app.index.database import INDEX_ERRORS, Listener, Pool, index_failure
from app.index.feed import Entry
from app.tasks import stop_task

__all__ = ["Entry", "FeedMover", "latest", "read"]

log = logging.getLogger("pictor")

#: seconds between two moves when nothing is announced (a missed announcement costs this)
POLL_SECONDS = 1.0


async def read(
    pool: Pool,
    after: int,
    limit: int,
    *,
    metadata: bool,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[Entry]:
    try:
        return await index_feed.entries(pool, after, limit, metadata=metadata, start=start, end=end)
    except INDEX_ERRORS as exc:
        raise index_failure("the change feed could not be read", exc) from exc


async def latest(pool: Pool, *, metadata: bool) -> Entry | None:
    try:
        return await index_feed.latest(pool, metadata=metadata)
    except INDEX_ERRORS as exc:
        raise index_failure("the change feed could not be read", exc) from exc


class FeedMover:
    BATCH = 10000

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._wake = asyncio.Event()
        self._listener = Listener(pool, index_feed.FEED_CHANNEL, self._announced, self._wake.set)
        self._task: asyncio.Task[None] | None = None

    def _announced(self, _payload: str) -> None:
        self._wake.set()

    async def start(self) -> None:
        await self._listener.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self._listener.stop()

    async def move_now(self) -> int:
        """Number what is committed (as far as this mover may); how many it numbered."""
        total = 0
        while True:
            moved = await index_feed.move(self.pool, self.BATCH)
            if moved <= 0:
                return total
            total += moved
            if moved < self.BATCH:
                return total

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            self._wake.clear()
            try:
                await self.move_now()
            except INDEX_ERRORS as exc:  # the index is down: try again later
                log.debug("the change feed could not be numbered now: %s", exc)
                await asyncio.sleep(POLL_SECONDS)
