"""Start-up work shared by every entry point (``pictor serve``, the server processes,
the DIMSE process, ``pictor import``): migrations and crash recovery before serving.
No transport here: the CLI reaches this, never the HTTP application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.config import Settings
from app.index.database import EmbeddedPostgres, Pool, apply_migrations, create_pool, migrations
from app.index.instances import referenced_keys
from app.services.lifecycle import Lifecycle
from app.storage import BlobStore, open_blob_store
from app.storage.tiered import TieredBlobStore

log = logging.getLogger("pictor")


async def prepare(settings: Settings, dsn: str) -> None:
    """Once per start, before serving: apply migrations and recover from a crash."""
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
        if applied:
            log.info("applied schema migrations %s", applied)
        store = open_store(settings)

        async def referenced(keys: list[str], tier: int | None = None) -> set[str]:
            return await referenced_keys(pool, keys, tier)

        swept = await store.sweep(referenced)
        if any(swept.values()):
            log.warning("start-up sweep: removed %s", swept)
        recovered = await Lifecycle(settings, pool, store).recover()
        if recovered:
            log.warning("start-up: applied %d key object notes stored before a stop", recovered)
    finally:
        await pool.close()


__all__ = [
    "EmbeddedPostgres",
    "Pool",
    "create_pool",
    "open_database",
    "open_index",
    "open_store",
    "prepare",
    "schema_version",
]


def schema_version() -> int:
    """The index schema this version of Pictor brings (its last migration)."""
    return max(number for number, _ in migrations())


def open_store(settings: Settings) -> BlobStore:
    """The archive's blob store, as the settings say: ``PICTOR_STORAGE_URL``, else the
    data directory's ``storage/``; with ``PICTOR_COLD_STORAGE_URL``, both tiers."""
    hot = open_blob_store(
        settings.storage_url, settings.storage_dir, settings.tmp_dir, settings.s3_endpoint_url
    )
    if not settings.cold_storage_url:
        return hot
    cold = open_blob_store(
        settings.cold_storage_url,
        settings.data_dir / "cold",
        settings.data_dir / "tmp-cold",  # its own: each store sweeps what is in its tmp
        settings.s3_endpoint_url,
    )
    return TieredBlobStore(hot, cold)


@asynccontextmanager
async def open_index(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Pool]:
    """A small pool on the archive's index, as a command reaches it: ``DATABASE_URL``,
    or the embedded PostgreSQL of the data directory (shared with a server running
    on it, else started and stopped again); migrations applied unless ``migrate`` is
    False (a restore fills an empty database itself)."""
    async with open_database(settings, migrate=migrate) as (_dsn, pool):
        yield pool


@asynccontextmanager
async def open_database(
    settings: Settings, *, migrate: bool = True
) -> AsyncIterator[tuple[str, Pool]]:
    """:func:`open_index`, with the database's connection URI (for PostgreSQL's own
    tools: a backup's ``pg_dump``)."""
    embedded: EmbeddedPostgres | None = None
    try:
        dsn = settings.database_url
        if not dsn:
            embedded = EmbeddedPostgres(settings.pg_dir)
            dsn = await asyncio.to_thread(embedded.start)
        # a purge holds one connection for the backup lock while it works on another; a
        # tier move holds a third, for the mover's lock
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            if migrate:
                async with pool.acquire() as conn:
                    await apply_migrations(conn)
            yield dsn, pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:  # stopped only if no other process uses it
            await asyncio.to_thread(embedded.stop)
