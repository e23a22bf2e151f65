"""The index's side of fixity checks (schemas/009): the files to check, in primary-key
order, and the problems found."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from app.index.database import INDEX_ERRORS, index_failure

#: advisory lock key: one scrubbing process in the whole archive (any node)
SCRUB_LOCK = 0x5049_4353


class Checked(msgspec.Struct, frozen=True):
    pk: int
    sop_instance_uid: str
    study_uid: str
    file_key: str
    file_size: int
    file_sha256: str


class Problem(msgspec.Struct, frozen=True):
    file_key: str
    sop_instance_uid: str
    study_uid: str
    problem: str
    found_at: str


async def files_after(
    pool: asyncpg.Pool, after: int, limit: int, study: str | None = None
) -> list[Checked]:
    """Up to ``limit`` stored instances with a primary key above ``after`` (of one
    study, if given), in primary-key order."""
    try:
        rows = await pool.fetch(
            """SELECT i.pk, i.sop_instance_uid, s.study_uid, i.file_key, i.file_size,
                      i.file_sha256
               FROM instance i JOIN study s ON s.pk = i.study_pk
               WHERE i.pk > $1 AND ($2::text IS NULL OR s.study_uid = $2)
               ORDER BY i.pk LIMIT $3""",
            after,
            study,
            limit,
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index could not be read", exc, client_values=False) from exc
    return [Checked(*r) for r in rows]


async def stored_file(pool: asyncpg.Pool, file_key: str) -> Checked | None:
    """The stored instance whose file is ``file_key``, if any."""
    row = await pool.fetchrow(
        """SELECT i.pk, i.sop_instance_uid, s.study_uid, i.file_key, i.file_size,
                  i.file_sha256
           FROM instance i JOIN study s ON s.pk = i.study_pk WHERE i.file_key = $1""",
        file_key,
    )
    return Checked(*row) if row is not None else None


async def record(pool: asyncpg.Pool, found: Sequence[tuple[Checked, str | None]]) -> None:
    """Each checked file's outcome: a problem kept (first seen kept), or cleared."""
    bad = [(c.file_key, c.sop_instance_uid, c.study_uid, p) for c, p in found if p]
    good = [c.file_key for c, p in found if not p]
    async with pool.acquire() as conn, conn.transaction():
        if bad:
            await conn.executemany(
                """INSERT INTO fixity_problem (file_key, sop_instance_uid, study_uid, problem)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (file_key) DO UPDATE
                   SET problem = EXCLUDED.problem, checked_at = now()""",
                bad,
            )
        if good:
            await conn.execute("DELETE FROM fixity_problem WHERE file_key = ANY($1::text[])", good)


async def problems(pool: asyncpg.Pool) -> list[Problem]:
    """The open problems (of files still referenced by an instance)."""
    rows = await pool.fetch(
        """SELECT p.file_key, p.sop_instance_uid, p.study_uid, p.problem,
                  to_char(p.found_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           FROM fixity_problem p
           WHERE EXISTS (SELECT 1 FROM instance i WHERE i.file_key = p.file_key)
           ORDER BY p.study_uid, p.file_key"""
    )
    return [Problem(*r) for r in rows]


async def count_problems(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            """SELECT count(*) FROM fixity_problem p
               WHERE EXISTS (SELECT 1 FROM instance i WHERE i.file_key = p.file_key)"""
        )
    )


async def scrub_position(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT position FROM scrub_state"))


async def scrub_advance(pool: asyncpg.Pool, position: int) -> None:
    """Move the scrub on; position 0 starts a new round (the last one ended now)."""
    if position == 0:
        await pool.execute(
            "UPDATE scrub_state SET position = 0, last_round = now(), round_started = now()"
        )
    else:
        await pool.execute("UPDATE scrub_state SET position = $1", position)


async def totals(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """Stored instances, their bytes, and instances in the trash."""
    row = await pool.fetchrow(
        """SELECT coalesce(sum(num_instances), 0), coalesce(sum(size_bytes), 0),
                  (SELECT count(*) FROM trash_instance)
           FROM study"""
    )
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
