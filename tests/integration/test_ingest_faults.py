"""The two-phase store when the index fails at the commit (issue #19): the transaction
may or may not have committed, so the published files are neither kept blindly nor
unpublished blindly; once the index answers again, what it holds decides. Real
PostgreSQL (stopped and started by the test), real files, the real ingest service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.bootstrap import prepare
from app.config import Settings, load_settings
from app.index.database import EmbeddedPostgres, create_pool
from app.services.ingest import ALREADY_STORED, FAILED, STORED, Ingest
from app.storage import FileBlobStore, Upload

from synth import ct_slice, new_uids


async def _index(tmp_path: Path) -> tuple[EmbeddedPostgres, Settings, Any]:
    """A real embedded PostgreSQL with the archive's schema, the settings of a data
    directory beside it, and a pool."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    dsn = await asyncio.to_thread(pg.start)
    settings = load_settings({"data_dir": str(tmp_path / "data")}, environ={})
    await prepare(settings, dsn)
    return pg, settings, await create_pool(dsn, min_size=1, max_size=4)


def test_a_commit_lost_with_the_database_is_resolved_once_it_is_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        pg, settings, pool = await _index(tmp_path)

        class DatabaseDiesAfterPublish(FileBlobStore):
            """The files are linked into place, then the database goes away."""

            async def publish(self, items: Iterable[tuple[Upload, str]]):  # type: ignore[no-untyped-def]
                pubs = await super().publish(items)
                await asyncio.to_thread(pg.stop)
                return pubs

        store = DatabaseDiesAfterPublish(settings.storage_dir, settings.tmp_dir)
        ingest = Ingest(settings, pool, store)
        study, series = new_uids()
        parts = []
        for i in range(3):
            temp = ingest.new_part()
            await temp.write(ct_slice(study, series, i, rows=32, cols=32))
            parts.append(await ingest.complete(temp))
        outcomes = await ingest.commit(parts)
        assert [o.status for o in outcomes] == [FAILED] * 3
        assert {o.reason for o in outcomes} == {0xA700}  # out of resources: retry later
        published = list(settings.storage_dir.rglob("*.dcm"))
        assert len(published) == 3, "kept until the index says whether they were committed"
        assert any(p.suffix == ".intent" for p in settings.tmp_dir.iterdir())
        await asyncio.to_thread(pg.start)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(settings.tmp_dir.iterdir()):
            await asyncio.sleep(0.2)
        assert list(settings.tmp_dir.iterdir()) == []  # no .part, no .intent
        assert list(settings.storage_dir.rglob("*.dcm")) == []  # no row, so no file
        assert await pool.fetchval("SELECT count(*) FROM instance") == 0
        # and the archive stores again on the same pool
        again = FileBlobStore(settings.storage_dir, settings.tmp_dir)
        ingest = Ingest(settings, pool, again)
        temp = ingest.new_part()
        await temp.write(ct_slice(study, series, 0, rows=32, cols=32))
        stored = await ingest.commit([await ingest.complete(temp)])
        assert [o.status for o in stored] == [STORED]
        await pool.close()
        await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())


def test_the_loser_of_a_race_keeps_an_object_the_winner_s_row_references(
    tmp_path: Path,
) -> None:
    """Two uploads of one instance at once, on a store whose create-if-absent is a check
    and then a write (moto's S3 is; some S3-compatible servers ignore If-None-Match):
    both report their object created under the same key. The index keeps one row; the
    loser must not delete the object that row references (an object goes only when no
    row references it)."""

    async def scenario() -> None:
        pg, settings, pool = await _index(tmp_path)
        both = asyncio.Barrier(2)

        class CheckThenWrite(FileBlobStore):
            """Both publishers check before either writes; the second write succeeds too."""

            async def publish(self, items: Iterable[tuple[Upload, str]]):  # type: ignore[no-untyped-def]
                await both.wait()
                pubs = await super().publish(items)
                for pub in pubs:
                    pub.linked = True  # it found no object when it looked
                return pubs

        store = CheckThenWrite(settings.storage_dir, settings.tmp_dir)
        study, series = new_uids()
        dataset = ct_slice(study, series, 0, rows=32, cols=32)

        async def upload() -> str:
            ingest = Ingest(settings, pool, store)
            temp = ingest.new_part()
            await temp.write(dataset)
            [outcome] = await ingest.commit([await ingest.complete(temp)])
            return outcome.status

        statuses = sorted(await asyncio.gather(upload(), upload()))
        assert statuses == sorted([STORED, ALREADY_STORED])
        key = await pool.fetchval("SELECT file_key FROM instance")
        assert store.path(key).read_bytes() == dataset
        assert list(settings.tmp_dir.iterdir()) == []
        await pool.close()
        await asyncio.to_thread(pg.stop)

    asyncio.run(scenario())
