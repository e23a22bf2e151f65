"""The per-process instance cache (app.services.retrieve.InstanceCache) against a real
PostgreSQL, as two server nodes would share it (DESIGN.md decision 8): a change one
node commits with notify_changed reaches the other node's cache at commit, and only a
change so announced does (the short TTL bounds the rest)."""

from __future__ import annotations

import asyncio

from app.index.database import create_pool
from app.index.instances import notify_changed
from app.services.retrieve import InstanceCache, Scope

from conftest import Archive, embedded_dsn, multipart
from synth import ct_slice, new_uids, sop_instance_uid

SQL = "UPDATE instance SET file_sha256 = $2 WHERE sop_instance_uid = $1"


def test_an_announced_change_reaches_every_nodes_cache(archive: Archive) -> None:
    study, series = new_uids()
    assert (
        archive.stow(multipart([ct_slice(study, series, 0, rows=16, cols=16)])).status_code == 200
    )
    sop = sop_instance_uid(series, 0)
    scope = Scope(study, series, sop)
    dsn = embedded_dsn(archive.data_dir)

    async def run() -> tuple[str, str, str, str]:
        node_a = await create_pool(dsn, min_size=1, max_size=2)
        node_b = await create_pool(dsn, min_size=1, max_size=2)
        cache = InstanceCache(node_a, ttl=60)
        await cache.start()
        try:
            original = (await cache.instance(scope)).file_sha256
            # node B changes the row and announces it in the same transaction
            async with node_b.acquire() as conn, conn.transaction():
                await conn.execute(SQL, sop, "announced")
                await notify_changed(conn, [sop])
            await asyncio.sleep(0.5)  # NOTIFY is delivered after the commit
            announced = (await cache.instance(scope)).file_sha256
            # a change nobody announces is not seen while the entry lives (60 s here)
            async with node_b.acquire() as conn:
                await conn.execute(SQL, sop, "silent")
            await asyncio.sleep(0.5)
            silent = (await cache.instance(scope)).file_sha256
            async with node_b.acquire() as conn:
                await conn.execute(SQL, sop, original)
            return original, announced, silent, (await cache.instance(scope)).file_sha256
        finally:
            await cache.stop()
            await node_a.close()
            await node_b.close()

    original, announced, silent, last = asyncio.run(run())
    assert announced == "announced" != original
    assert silent == "announced"  # cached: the change was not announced
    assert last == "announced"
