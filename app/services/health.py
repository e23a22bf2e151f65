"""Readiness: whether this node can serve (for ``/health``, load balancers and
orchestrators). It says what fails, never why: the cause goes to the log."""

from __future__ import annotations

import errno
import logging

from app.errors import ServiceUnavailable
from app.index.database import Pool, ping
from app.storage import BlobStore

log = logging.getLogger("pictor")


async def readiness(pool: Pool, store: BlobStore, min_free: int = 0) -> dict[str, object]:
    """The index answers a query and the storage takes a new blob; ServiceUnavailable
    naming what fails otherwise. A storage that is full, or whose free space is below
    ``min_free`` (``PICTOR_MIN_FREE_BYTES``), is "degraded", not down: searches and
    retrievals go on, only new data are refused (507)."""
    try:
        await ping(pool)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.error("health: the index does not answer: %s", exc)
        raise ServiceUnavailable("index unreachable") from exc
    storage: dict[str, object] = {"writable": True, "min_free_bytes": min_free}
    problems: list[str] = []
    try:
        free = await store.probe()
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.error("health: the storage is not writable: %s", exc)
            raise ServiceUnavailable("storage not writable") from exc
        free = 0
        storage["writable"] = False
    storage["free_bytes"] = free
    if free < min_free or not storage["writable"]:
        storage["full"] = True
        problems.append("storage full: new data are refused until space is freed")
    body: dict[str, object] = {"status": "degraded" if problems else "ok", "database": "ok"}
    body["storage"] = storage
    if problems:
        body["problems"] = problems
    return body
