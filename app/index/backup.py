"""The index's side of a backup (issue #19): one consistent point in time, with
PostgreSQL's own tools (``pg_dump`` / ``pg_restore``, shipped with pgserver).

A backup exports a snapshot (``pg_export_snapshot``) from a REPEATABLE READ transaction,
dumps it with ``pg_dump --snapshot`` and lists, in the same transaction, every file the
snapshot's rows reference: the dump and the list are of one moment, however long the
copy takes. Stored files are never changed, only created and deleted; deleting one
(the purge, a replacement) holds the shared side of :data:`BACKUP_LOCK` from before
its rows go until its files are gone, and a backup holds the exclusive side while it
copies, so no file it listed disappears under it (the purge waits for the next run).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import msgspec

from app.index.database import INDEX_ERRORS, index_failure

#: advisory lock key: backups (exclusive) against file deletions (shared)
BACKUP_LOCK = 0x5049_4342


class StoredFile(msgspec.Struct, frozen=True, array_like=True):
    key: str
    size: int
    sha256: str


class Snapshot(msgspec.Struct, frozen=True):
    id: str
    files: list[StoredFile]


@asynccontextmanager
async def file_deletions(pool: asyncpg.Pool) -> AsyncIterator[bool]:
    """While it is held, index rows and then their files may be deleted; False (nothing
    held) while a backup is copying: the caller defers its deletions."""
    async with pool.acquire() as conn:
        held = bool(await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", BACKUP_LOCK))
        try:
            yield held
        finally:
            if held:
                await _unlock(conn, "SELECT pg_advisory_unlock_shared($1)")


@asynccontextmanager
async def snapshot(pool: asyncpg.Pool) -> AsyncIterator[Snapshot]:
    """A point in time of the index, exported for ``pg_dump``, with the files its rows
    reference; file deletions wait until the block ends."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", BACKUP_LOCK)  # deletions finish
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                snapshot_id = await conn.fetchval("SELECT pg_export_snapshot()")
                rows = await conn.fetch(
                    "SELECT file_key, file_size, file_sha256 FROM instance"
                    " UNION ALL SELECT file_key, file_size, file_sha256 FROM trash_instance"
                    " ORDER BY 1"
                )
                files = [StoredFile(r[0], r[1], r[2]) for r in rows]
                yield Snapshot(str(snapshot_id), files)
        finally:
            await _unlock(conn, "SELECT pg_advisory_unlock($1)")


async def _unlock(conn: asyncpg.Connection, sql: str) -> None:
    """Release the lock; an error never takes the place of the exception (or the
    cancellation) that ends the block: a lost connection took its lock with it."""
    try:
        await conn.execute(sql, BACKUP_LOCK)
    except INDEX_ERRORS:
        pass


async def is_empty(pool: asyncpg.Pool) -> bool:
    """Whether the database holds no archive yet (a restore needs an empty one)."""
    try:
        found = await pool.fetchval("SELECT to_regclass('public.schema_migration') IS NOT NULL")
    except INDEX_ERRORS as exc:
        raise index_failure("the index could not be read", exc, client_values=False) from exc
    return not found


def _tool(name: str) -> str:
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(Path(POSTGRES_BIN_PATH) / name)


async def _run(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()  # a cancelled backup or restore leaves no pg_dump behind
        await proc.wait()
        raise
    if proc.returncode != 0:
        name = Path(args[0]).name
        raise RuntimeError(f"{name} failed ({proc.returncode}): {err.decode(errors='replace')}")


async def dump(dsn: str, snapshot_id: str, path: Path) -> None:
    """``pg_dump`` of the exported snapshot, custom format (compressed; what
    ``pg_restore`` reads), to ``path``."""
    await _run(
        [
            _tool("pg_dump"),
            "--format=custom",
            f"--snapshot={snapshot_id}",
            "--no-owner",
            "--no-privileges",
            f"--file={path}",
            f"--dbname={dsn}",
        ]
    )


async def restore(dsn: str, path: Path) -> None:
    """``pg_restore`` of a dump into the (empty) database of ``dsn``, in one transaction:
    all of it or nothing."""
    await _run(
        [
            _tool("pg_restore"),
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            f"--dbname={dsn}",
            str(path),
        ]
    )
