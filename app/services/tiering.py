"""Storage tiers (issue #16): idle studies move to the cold storage, read ones can come
back, and the index says where everything is.

A study is idle when nobody has read it (metadata, instances, frames, renderings; over
DICOMweb or DIMSE) nor stored into it for ``PICTOR_TIER_AFTER_DAYS`` and it was received
``PICTOR_TIER_MIN_AGE_DAYS`` ago or more. Reads are noted in memory by each process and
written to the study rows every few seconds (one UPDATE for all, never one per
request). One process of the whole archive moves blobs at a time (an advisory lock,
DESIGN.md decision 10): ``pictor tier run`` or the background job every
``PICTOR_TIER_INTERVAL`` seconds, at most ``PICTOR_TIER_RATE`` bytes a second. With
``PICTOR_TIER_RECALL`` the mover also brings back to hot each study with cold instances
that was read after it was moved. Reads never wait for any of this: the tiered store
reads from whichever tier holds a blob (app.storage.tiered).

A move copies each blob, checks the copy's SHA-256 against the one recorded at ingest,
records the new tier of the copied rows in one transaction and deletes the originals,
under the same guard as every file deletion (a backup in progress defers it); the
stores' intents undo a move interrupted at any point (app.storage.tiered).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from app.config import Settings
from app.errors import Conflict, NotFound, PictorError
from app.index import backup as index_backup
from app.index import tiering as index
from app.index.database import INDEX_ERRORS, Pool
from app.storage import BlobStore
from app.storage.tiered import COLD, HOT, TieredBlobStore
from app.tasks import stop_task

log = logging.getLogger("pictor.tiering")

TIER_NAMES = {HOT: "hot", COLD: "cold"}
#: seconds between two writes of the noted reads
FLUSH_SECONDS = 10.0
_MAX_NOTED = 50_000


class ReadNotes:
    """The studies this process has read since the last flush (a set: cheap enough to
    call on every request)."""

    def __init__(self) -> None:
        self._studies: set[str] = set()

    def note(self, study_uid: str) -> None:
        if len(self._studies) < _MAX_NOTED:
            self._studies.add(study_uid)

    def take(self) -> list[str]:
        taken, self._studies = self._studies, set()
        return sorted(taken)


#: one per process: the retrieve services note, the tiering job flushes
READS = ReadNotes()


class Moved(msgspec.Struct, kw_only=True):
    study_uid: str
    instances: int = 0
    bytes: int = 0
    #: blobs left where they were: missing, or their copy did not match the SHA-256
    problems: int = 0


class RunReport(msgspec.Struct, kw_only=True):
    dry_run: bool
    studies: list[Moved]

    @property
    def instances(self) -> int:
        return sum(s.instances for s in self.studies)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.studies)


def _copy(source: BlobStore, target: BlobStore, key: str) -> str:
    with source.open_blob(key) as blob:
        return target.import_blob(key, blob)


class Tiering:
    def __init__(
        self, settings: Settings, pool: Pool, store: BlobStore, *, moves: bool = True
    ) -> None:
        """``moves=False``: the background job only writes down the studies this process
        read (:data:`READS`); another process of the archive moves and recalls
        (``pictor serve``'s background process, :mod:`app.background`)."""
        self.settings = settings
        self.pool = pool
        self.store = store if isinstance(store, TieredBlobStore) else None
        self.moves = moves
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def _tiers(self) -> TieredBlobStore:
        if self.store is None:
            raise Conflict("no cold storage is configured (PICTOR_COLD_STORAGE_URL)")
        return self.store

    # -- moving ----------------------------------------------------------------------------

    @asynccontextmanager
    async def mover(self) -> AsyncIterator[bool]:
        """Whether this process is the archive's tier mover for the block (an advisory
        lock on a connection held meanwhile)."""
        async with self.pool.acquire() as conn:
            mine = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", index.TIER_LOCK))
            try:
                yield mine
            finally:
                if mine:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", index.TIER_LOCK)
                    except INDEX_ERRORS:
                        pass  # the session, and its lock, ended with the connection

    async def run(self, *, dry_run: bool = False, limit: int = 1000) -> RunReport:
        """Move the idle studies to cold (the caller is the mover), or list them."""
        tiers = self._tiers()
        idle = await index.idle_studies(
            self.pool, self.settings.tier_after_days, self.settings.tier_min_age_days, limit
        )
        if dry_run:
            return RunReport(
                dry_run=True,
                studies=[
                    Moved(study_uid=s.study_uid, instances=s.instances, bytes=s.bytes) for s in idle
                ],
            )
        moved = [await self.move(tiers, s.pk, s.study_uid, HOT, COLD) for s in idle]
        return RunReport(dry_run=False, studies=moved)

    async def recall(self, study_uid: str) -> Moved:
        """Bring a study's cold instances back to hot (the caller is the mover)."""
        tiers = self._tiers()
        pk = await index.study_pk(self.pool, study_uid)
        if pk is None:
            raise NotFound(f"no study {study_uid}")
        return await self.move(tiers, pk, study_uid, COLD, HOT)

    async def move(
        self, tiers: TieredBlobStore, study: int, study_uid: str, source: int, target: int
    ) -> Moved:
        """Copy the study's blobs from ``source`` to ``target`` (checked), record the
        move, delete the originals; bounded by ``PICTOR_TIER_RATE``."""
        result = Moved(study_uid=study_uid)
        blobs = await index.blobs_in_tier(self.pool, study, source)
        if not blobs:
            return result
        src, dst = tiers.tier(source), tiers.tier(target)
        keys = [b.file_key for b in blobs]
        dst_intent = await dst.retire(keys)  # a crash before the commit: copies go
        src_intent = await src.retire(keys)  # a crash after it: originals go
        copied: list[index.Blob] = []
        for blob in blobs:
            started = time.monotonic()
            try:
                digest = await asyncio.to_thread(_copy, src, dst, blob.file_key)
            except FileNotFoundError:
                log.error(
                    "tier move: %s is missing from the %s tier", blob.file_key, TIER_NAMES[source]
                )
                result.problems += 1
                continue
            if digest != blob.file_sha256:
                log.error(
                    "tier move: %s differs from the SHA-256 recorded at ingest; "
                    "left in the %s tier",
                    blob.file_key,
                    TIER_NAMES[source],
                )
                result.problems += 1
                continue
            copied.append(blob)
            pause = blob.file_size / self.settings.tier_rate - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)
        while True:
            async with index_backup.file_deletions(self.pool) as deletable:
                if deletable:  # not while a backup copies files
                    done = await index.set_tier(self.pool, study, copied, source, target)
                    await src.delete_retired(done, src_intent)
                    break
            await asyncio.sleep(5)
        undone = sorted(set(keys) - set(done))
        await dst.delete_retired(undone, dst_intent)  # copies nothing records
        moved = set(done)
        result.instances = len(moved)
        result.bytes = sum(b.file_size for b in copied if b.file_key in moved)
        log.info(
            "tier: study %s, %d instances (%d bytes) %s -> %s",
            study_uid,
            result.instances,
            result.bytes,
            TIER_NAMES[source],
            TIER_NAMES[target],
        )
        return result

    # -- the background job ----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        """Write the noted reads."""
        studies = READS.take()
        if not studies:
            return
        try:
            await index.note_reads(self.pool, studies)
        except INDEX_ERRORS as exc:
            log.warning("noting %d read studies failed: %s", len(studies), exc)

    async def _loop(self) -> None:
        interval = self.settings.tier_interval
        due = time.monotonic() + interval if interval else float("inf")
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()
            if not self.enabled or not self.moves:
                continue
            try:
                recalls = (
                    await index.read_since_moved(self.pool) if self.settings.tier_recall else []
                )
                now = time.monotonic()
                if not recalls and now < due:
                    continue  # the lock is taken only when there is work
                async with self.mover() as mine:
                    if not mine:
                        continue  # another process moves
                    for uid in recalls:
                        await self.recall(uid)
                    if now >= due:
                        due = now + interval
                        report = await self.run()
                        if report.studies:
                            log.info(
                                "tier run: %d studies, %d instances to cold",
                                len(report.studies),
                                report.instances,
                            )
            except (*INDEX_ERRORS, OSError, PictorError) as exc:
                log.warning("tier move paused: %s", exc)
            except Exception:  # a bug must not end the job for the life of the process
                log.exception("tier move failed")


async def status(pool: Pool, study_uid: str | None = None) -> dict[str, Any]:
    """Where the archive's instances are: per tier, and for one study."""
    if study_uid is not None:
        tiers = await index.study_tiers(pool, study_uid)
        if not tiers:
            raise NotFound(f"no study {study_uid}")
        return {"study": study_uid, "tiers": _tiers(tiers)}
    found = await index.status(pool)
    return {
        "tiers": _tiers(found.tiers),
        "studies": {
            "hot": found.hot_studies,
            "cold": found.cold_studies,
            "mixed": found.mixed_studies,
        },
    }


def _tiers(counts: list[index.TierCount]) -> dict[str, dict[str, int]]:
    out = {name: {"instances": 0, "bytes": 0} for name in TIER_NAMES.values()}
    for c in counts:
        out[TIER_NAMES.get(c.tier, str(c.tier))] = {"instances": c.instances, "bytes": c.bytes}
    return out
