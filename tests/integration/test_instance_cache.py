"""The per-process instance cache (app.services.retrieve.InstanceCache) against a real
PostgreSQL, as two server nodes would share it (DESIGN.md decision 8): a change one
node commits with notify_changed reaches the other node's cache at commit, and only a
change so announced does (the short TTL bounds the rest)."""

from __future__ import annotations

import asyncio
import time

from app.index.database import create_pool
from app.index.instances import notify_changed, notify_study_changed
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


def test_a_study_announcement_drops_every_instance_of_the_study(archive: Archive) -> None:
    """Lifecycle changes announce their study once (notify_study_changed), whatever its
    size; every cached instance of that study is dropped, and only those."""
    study, series = new_uids()
    other, other_series = new_uids()
    files = [ct_slice(study, series, i, rows=16, cols=16) for i in range(2)]
    files.append(ct_slice(other, other_series, 0, rows=16, cols=16))
    assert archive.stow(multipart(files)).status_code == 200
    scopes = [Scope(study, series, sop_instance_uid(series, i)) for i in range(2)]
    kept = Scope(other, other_series, sop_instance_uid(other_series, 0))
    dsn = embedded_dsn(archive.data_dir)

    async def run() -> tuple[list[bool], bool]:
        node_a = await create_pool(dsn, min_size=1, max_size=2)
        node_b = await create_pool(dsn, min_size=1, max_size=2)
        cache = InstanceCache(node_a, ttl=60)
        await cache.start()
        try:
            for scope in [*scopes, kept]:
                await cache.instance(scope)
            async with node_b.acquire() as conn, conn.transaction():
                await notify_study_changed(conn, study)
            await asyncio.sleep(0.5)
            dropped = [
                cache.peek(s.study, s.series or "", s.instance or "") is None for s in scopes
            ]
            return dropped, cache.peek(kept.study, kept.series or "", kept.instance or "") is None
        finally:
            await cache.stop()
            await node_a.close()
            await node_b.close()

    dropped, other_dropped = asyncio.run(run())
    assert dropped == [True, True]
    assert other_dropped is False


def test_settle_waits_for_its_own_marker_and_the_marker_is_no_change(archive: Archive) -> None:
    """A delete or a correction answers after InstanceCache.settle: it returns once its
    marker, announced after the caller's commit, came back through this process's
    listener (so every listener was told of the change by then). Another process's
    marker drops nothing; with nothing listening it returns at once."""
    study, series = new_uids()
    assert (
        archive.stow(multipart([ct_slice(study, series, 0, rows=16, cols=16)])).status_code == 200
    )
    scope = Scope(study, series, sop_instance_uid(series, 0))
    dsn = embedded_dsn(archive.data_dir)

    async def run() -> tuple[bool, bool, bool, float]:
        node_a = await create_pool(dsn, min_size=1, max_size=2)
        node_b = await create_pool(dsn, min_size=1, max_size=2)
        settling, other = InstanceCache(node_a, ttl=60), InstanceCache(node_b, ttl=60)
        await settling.start()
        await other.start()
        try:
            await other.instance(scope)
            changes = other._changes
            heard = await settling.settle(timeout=5)
            await asyncio.sleep(0.3)  # the marker has reached the other node too
            kept = (
                other.peek(study, series, scope.instance or "") is not None
                and other._changes == changes
            )
            await settling.stop()
            began = time.monotonic()
            deaf = await settling.settle(timeout=5)
            return heard, kept, deaf, time.monotonic() - began
        finally:
            await other.stop()
            await node_a.close()
            await node_b.close()

    heard, kept, deaf, waited = asyncio.run(run())
    assert heard is True
    assert kept is True
    assert deaf is False and waited < 1
