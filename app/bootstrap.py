"""Start-up work shared by every entry point (``pictor serve``, the server processes,
the DIMSE process, ``pictor import``): migrations and crash recovery before serving.
No transport here: the CLI reaches this, never the HTTP application factory."""

from __future__ import annotations

import logging

from app.config import Settings
from app.index.database import apply_migrations, create_pool
from app.index.instances import referenced_keys
from app.storage import FileBlobStore

log = logging.getLogger("pictor")


async def prepare(settings: Settings, dsn: str) -> None:
    """Once per start, before serving: apply migrations and recover from a crash."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
        if applied:
            log.info("applied schema migrations %s", applied)
        store = FileBlobStore(settings.storage_dir, settings.tmp_dir)
        swept = await store.sweep(lambda keys: referenced_keys(pool, keys))
        if any(swept.values()):
            log.warning("start-up sweep: removed %s", swept)
    finally:
        await pool.close()
