"""The index side of the change feed (issue #17; ``schemas/013``).

Writers leave ``change_log`` rows in their own transactions (triggers on ``instance``;
:func:`log_study_update` for corrections). :func:`move` numbers the committed ones into
``change_feed``: one mover at a time (a transaction-scoped advisory lock), each batch in
one transaction, numbers following the highest one given. A batch becomes visible
whole, after the one before it, so a reader never finds an entry below the highest
Sequence it has seen appear later, however the writers' transactions interleave.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from app.dicom.patch import patched_metadata

#: advisory lock key of the mover ("PICF")
FEED_LOCK = 0x50494346
#: announced by the triggers when a transaction leaves changes to number
FEED_CHANNEL = "pictor_feed"
BUSY = -1


async def log_study_update(conn: asyncpg.Connection, study_pk: int) -> None:
    """An 'update' entry for every instance of the study (a correction or a merge
    changed their attributes), in the caller's transaction."""
    await conn.execute(
        """INSERT INTO change_log (action, study_uid, series_uid, sop_uid)
           SELECT 'update', st.study_uid, se.series_uid, i.sop_instance_uid
             FROM instance i
             JOIN series se ON se.pk = i.series_pk
             JOIN study st ON st.pk = i.study_pk
            WHERE i.study_pk = $1
            ORDER BY i.pk""",
        study_pk,
    )
    await conn.execute("SELECT pg_notify($1, '')", FEED_CHANNEL)


async def move(pool: asyncpg.Pool, batch: int = 10000) -> int:
    """Number up to ``batch`` committed changes; how many (:data:`BUSY` when another
    mover holds the lock: it will take these too)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", FEED_LOCK):
            return BUSY
        moved: int = await conn.fetchval(
            """WITH taken AS (
                   DELETE FROM change_log
                    WHERE id IN (SELECT id FROM change_log ORDER BY id LIMIT $1)
                   RETURNING *
               ), numbered AS (
                   INSERT INTO change_feed (seq, at, action, study_uid, series_uid, sop_uid)
                   SELECT (SELECT coalesce(max(seq), 0) FROM change_feed)
                              + row_number() OVER (ORDER BY t.id),
                          t.at, t.action, t.study_uid, t.series_uid, t.sop_uid
                     FROM taken t
                   RETURNING 1
               )
               SELECT count(*) FROM numbered""",
            batch,
        )
        return moved


async def pending(pool: asyncpg.Pool) -> int:
    """Changes committed and not numbered yet."""
    return int(await pool.fetchval("SELECT count(*) FROM change_log"))


@dataclass(frozen=True)
class Entry:
    seq: int
    at: dt.datetime
    action: str
    study: str
    series: str
    sop: str
    #: current, replaced, deleted
    state: str
    #: the instance's DICOM JSON now (corrections applied), when asked for and stored
    metadata: bytes | None


_ENTRIES = """
SELECT f.seq, f.at, f.action, f.study_uid, f.series_uid, f.sop_uid,
       last.seq AS last_seq, last.action AS last_action,
       {metadata}
  FROM change_feed f
  CROSS JOIN LATERAL (
       SELECT g.seq, g.action FROM change_feed g
        WHERE g.sop_uid = f.sop_uid ORDER BY g.seq DESC LIMIT 1) last
  {join}
 WHERE f.seq > $1
   AND ($3::timestamptz IS NULL OR f.at >= $3)
   AND ($4::timestamptz IS NULL OR f.at < $4)
 ORDER BY f.seq
 LIMIT $2
"""
_WITH_METADATA = (
    "i.metadata, st.patch",
    """LEFT JOIN instance i ON i.sop_instance_uid = f.sop_uid AND last.action <> 'delete'
       LEFT JOIN study st ON st.pk = i.study_pk""",
)
_WITHOUT_METADATA = ("NULL::json AS metadata, NULL::jsonb AS patch", "")


def _state(row: asyncpg.Record) -> str:
    if row["last_action"] == "delete":
        return "deleted"
    return "replaced" if row["last_seq"] > row["seq"] else "current"


def _entry(row: asyncpg.Record) -> Entry:
    meta = row["metadata"]  # json and jsonb arrive as bytes (database.json_codecs)
    if meta is not None and row["patch"] is not None:
        meta = patched_metadata(bytes(meta), bytes(row["patch"]))
    return Entry(
        row["seq"],
        row["at"],
        row["action"],
        row["study_uid"],
        row["series_uid"],
        row["sop_uid"],
        _state(row),
        meta,
    )


async def entries(
    pool: asyncpg.Pool,
    after: int,
    limit: int,
    *,
    metadata: bool,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[Entry]:
    """The entries after Sequence ``after``, oldest first, within [start, end)."""
    columns, join = _WITH_METADATA if metadata else _WITHOUT_METADATA
    rows = await pool.fetch(_ENTRIES.format(metadata=columns, join=join), after, limit, start, end)
    return [_entry(r) for r in rows]


async def latest(pool: asyncpg.Pool, *, metadata: bool) -> Entry | None:
    top: Any = await pool.fetchval("SELECT max(seq) FROM change_feed")
    if top is None:
        return None
    found = await entries(pool, int(top) - 1, 1, metadata=metadata)
    return found[0] if found else None
