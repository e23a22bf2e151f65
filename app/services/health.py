"""Readiness: whether this node can serve (for ``/health``, load balancers and
orchestrators). It says what fails, never why: the cause goes to the log."""

from __future__ import annotations

import logging

from app.errors import ServiceUnavailable
from app.index.database import Pool, ping
from app.storage import BlobStore

log = logging.getLogger("pictor")


async def readiness(pool: Pool, store: BlobStore) -> dict[str, object]:
    """The index answers a query and the storage takes a new blob; ServiceUnavailable
    naming what fails otherwise."""
    try:
        await ping(pool)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        log.error("health: the index does not answer: %s", exc)
        raise ServiceUnavailable("index unreachable") from exc
    try:
        free = await store.probe()
    except OSError as exc:
        log.error("health: the storage is not writable: %s", exc)
        raise ServiceUnavailable("storage not writable") from exc
    return {"status": "ok", "database": "ok", "storage": {"writable": True, "free_bytes": free}}
