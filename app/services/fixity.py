"""Fixity (issue #19): every stored file is checked against the size and SHA-256
recorded at ingest, by ``pictor verify`` on demand and by a background scrub at a
bounded rate (``PICTOR_SCRUB_RATE`` bytes a second) that goes round the whole archive
again and again. A missing or changed file is recorded (schemas/009), logged, counted
in ``/metrics`` and makes ``/health`` "degraded" until it checks out again: repaired
from a backup (``pictor verify --repair-from``), or its instance deleted."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import msgspec

from app.index import fixity as index
from app.index.database import INDEX_ERRORS, Pool
from app.index.fixity import Checked
from app.storage import BlobStore
from app.tasks import stop_task

log = logging.getLogger(__name__)

BATCH = 100
#: files checked at once by pictor verify (the scrub: one at a time, at its rate)
PARALLEL = 4
MISSING = "missing"
CHANGED = "changed"


class VerifyReport(msgspec.Struct, kw_only=True):
    checked: int = 0
    bytes: int = 0
    problems: list[tuple[str, str, str]] = []  # (file key, SOP Instance UID, problem)


async def check(store: BlobStore, item: Checked) -> str | None:
    """The problem with one stored file, or None when it is as it was received."""
    try:
        size, digest = await asyncio.to_thread(store.hash_blob, item.file_key)
    except FileNotFoundError:
        return MISSING
    if size != item.file_size or digest != item.file_sha256:
        return CHANGED
    return None


async def verify(pool: Pool, store: BlobStore, study: str | None = None) -> VerifyReport:
    """Check every stored file (of ``study``); record what is found."""
    report = VerifyReport()
    position = 0
    # a few files at once: reading one while hashing another keeps disk and CPU busy
    limit = asyncio.Semaphore(PARALLEL)

    async def one(item: Checked) -> str | None:
        async with limit:
            return await check(store, item)

    while batch := await index.files_after(pool, position, BATCH, study):
        outcomes = await asyncio.gather(*(one(item) for item in batch))
        found = list(zip(batch, outcomes))
        await index.record(pool, found)
        for item, problem in found:
            report.checked += 1
            report.bytes += item.file_size
            if problem:
                log.error("fixity: %s is %s (%s)", item.file_key, problem, item.sop_instance_uid)
                report.problems.append((item.file_key, item.sop_instance_uid, problem))
        position = batch[-1].pk
    return report


async def repair(pool: Pool, store: BlobStore, backup: Path) -> tuple[list[str], list[str]]:
    """Put back, from the backup directory ``backup``, each file with an open problem
    whose copy there has the SHA-256 recorded at ingest. (repaired, not repairable)."""
    repaired: list[str] = []
    left: list[str] = []
    for problem in await index.problems(pool):
        source = backup / "files" / problem.file_key
        item = await index.stored_file(pool, problem.file_key)
        if item is None or not source.is_file() or await _sha256(source) != item.file_sha256:
            left.append(problem.file_key)
            continue
        await asyncio.to_thread(store.import_blob, item.file_key, source)
        outcome = await check(store, item)
        await index.record(pool, [(item, outcome)])
        (left if outcome else repaired).append(problem.file_key)
        if not outcome:
            log.warning("fixity: %s repaired from %s", item.file_key, backup)
    return repaired, left


async def _sha256(path: Path) -> str:
    def run() -> str:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    return await asyncio.to_thread(run)


class Scrubber:
    """The background round over every stored file, at most ``rate`` bytes a second.
    One process of the whole archive scrubs (an advisory lock held on a connection of
    its own); the others stand by and take over when it stops."""

    def __init__(self, pool: Pool, store: BlobStore, rate: float) -> None:
        self.pool = pool
        self.store = store
        self.rate = rate
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.rate > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                async with self.pool.acquire() as conn:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", index.SCRUB_LOCK):
                        try:
                            await self._scrub(conn)
                        finally:
                            try:  # never in place of a cancellation
                                await conn.execute(
                                    "SELECT pg_advisory_unlock($1)", index.SCRUB_LOCK
                                )
                            except INDEX_ERRORS:
                                pass  # the session, and its lock, ended with the connection
            except INDEX_ERRORS as exc:
                log.warning("fixity scrub paused: %s", exc)
            await asyncio.sleep(30)  # stand by, or wait for the index

    async def _scrub(self, lock: Any) -> None:
        while True:
            await lock.fetchval("SELECT 1")  # still holding the lock (the session lives)
            position = await index.scrub_position(self.pool)
            batch = await index.files_after(self.pool, position, BATCH)
            if not batch:
                await index.scrub_advance(self.pool, 0)  # a round is complete
                await asyncio.sleep(60)
                continue
            found = []
            for item in batch:
                problem = await check(self.store, item)
                if problem:
                    log.error("fixity scrub: %s is %s", item.file_key, problem)
                found.append((item, problem))
                await asyncio.sleep(item.file_size / self.rate)  # the bounded rate
            await index.record(self.pool, found)
            await index.scrub_advance(self.pool, batch[-1].pk)
