"""The index's side of storage tiers (schemas/011): which instances are in which tier,
which studies are idle, reads noted, moves committed."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from app.index.database import INDEX_ERRORS, index_failure
from app.index.instances import notify_study_changed

#: advisory lock key: one tier mover in the whole archive (any node)
TIER_LOCK = 0x5049_5449


class Idle(msgspec.Struct, frozen=True):
    pk: int
    study_uid: str
    instances: int
    bytes: int
    idle_since: str


class Blob(msgspec.Struct, frozen=True):
    pk: int
    file_key: str
    file_size: int
    file_sha256: str


class TierCount(msgspec.Struct, frozen=True):
    tier: int
    instances: int
    bytes: int


class Status(msgspec.Struct, frozen=True):
    tiers: list[TierCount]
    #: studies all in hot, all in cold, in both
    hot_studies: int
    cold_studies: int
    mixed_studies: int


async def idle_studies(
    pool: asyncpg.Pool, after_days: float, min_age_days: float, limit: int = 1000
) -> list[Idle]:
    """Studies with instances in the hot tier that nobody has read nor stored into for
    ``after_days`` and that were received ``min_age_days`` ago or more, idlest first."""
    try:
        rows = await pool.fetch(
            """SELECT st.pk, st.study_uid, count(i.pk) AS instances,
                      coalesce(sum(i.file_size), 0)::bigint AS bytes,
                      greatest(coalesce(st.last_read_at, st.updated_at), st.updated_at)::text
                          AS idle_since
                 FROM study st JOIN instance i ON i.study_pk = st.pk AND i.tier = 0
                WHERE greatest(coalesce(st.last_read_at, st.updated_at), st.updated_at)
                          < now() - make_interval(secs => $1)
                  AND st.created_at < now() - make_interval(secs => $2)
                GROUP BY st.pk
                ORDER BY greatest(coalesce(st.last_read_at, st.updated_at), st.updated_at)
                LIMIT $3""",
            after_days * 86400,
            min_age_days * 86400,
            limit,
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the idle studies could not be read", exc, client_values=False) from exc
    return [Idle(**dict(r)) for r in rows]


async def study_pk(pool: asyncpg.Pool, study_uid: str) -> int | None:
    try:
        pk = await pool.fetchval("SELECT pk FROM study WHERE study_uid = $1", study_uid)
    except INDEX_ERRORS as exc:
        raise index_failure("the study could not be looked up", exc) from exc
    return None if pk is None else int(pk)


async def blobs_in_tier(pool: asyncpg.Pool, study: int, tier: int) -> list[Blob]:
    rows = await pool.fetch(
        "SELECT pk, file_key, file_size, file_sha256 FROM instance"
        " WHERE study_pk = $1 AND tier = $2 ORDER BY pk",
        study,
        tier,
    )
    return [Blob(**dict(r)) for r in rows]


async def set_tier(
    pool: asyncpg.Pool, study: int, moved: list[Blob], source: int, target: int
) -> list[str]:
    """Record that these blobs are now in ``target``: the keys of the rows that were
    still in ``source`` with the same blob (a row replaced or deleted meanwhile is left
    alone). The study row is touched, so its stored QIDO answers (InstanceAvailability)
    are rebuilt by their trigger, and every node's caches hear of it."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """UPDATE instance i SET tier = $3
                 FROM unnest($1::bigint[], $2::text[]) AS m(pk, file_key)
                WHERE i.pk = m.pk AND i.file_key = m.file_key AND i.tier = $4
            RETURNING i.file_key""",
            [b.pk for b in moved],
            [b.file_key for b in moved],
            target,
            source,
        )
        uid = await conn.fetchval(
            "UPDATE study SET tiered_at = now() WHERE pk = $1 RETURNING study_uid", study
        )
        if uid is not None:
            await notify_study_changed(conn, uid)
    return [r["file_key"] for r in rows]


async def note_reads(pool: asyncpg.Pool, study_uids: list[str]) -> None:
    """These studies were read now. A study's row is written at most once an hour for
    its reads (tiering counts in days; each write also rebuilds the study's stored QIDO
    answers through their trigger), and always for a read after its last move (what a
    recall on read looks for)."""
    await pool.execute(
        """UPDATE study SET last_read_at = now()
            WHERE study_uid = ANY($1::text[])
              AND (last_read_at IS NULL OR last_read_at < now() - interval '1 hour'
                   OR last_read_at < tiered_at)""",
        study_uids,
    )


async def status(pool: asyncpg.Pool) -> Status:
    """Instances, bytes and studies per tier. The cold side is read through the partial
    indexes of the cold rows, the totals from the study rows' aggregates: no scan of
    the whole instance table."""
    try:
        row = await pool.fetchrow(
            """SELECT (SELECT count(*) FROM study) AS studies,
                      (SELECT coalesce(sum(num_instances), 0)::bigint FROM study) AS instances,
                      (SELECT coalesce(sum(size_bytes), 0)::bigint FROM study) AS bytes,
                      count(c.study_pk) AS cold_studies,
                      count(c.study_pk) FILTER (WHERE c.n < st.num_instances) AS mixed,
                      coalesce(sum(c.n), 0)::bigint AS cold_instances,
                      coalesce(sum(c.size), 0)::bigint AS cold_bytes
                 FROM (SELECT study_pk, count(*) AS n, sum(file_size) AS size
                         FROM instance WHERE tier <> 0 GROUP BY study_pk) c
                 JOIN study st ON st.pk = c.study_pk"""
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the tier status could not be read", exc, client_values=False) from exc
    assert row is not None
    cold_instances, cold_bytes = int(row["cold_instances"]), int(row["cold_bytes"])
    return Status(
        tiers=[
            TierCount(
                tier=0,
                instances=int(row["instances"]) - cold_instances,
                bytes=int(row["bytes"]) - cold_bytes,
            ),
            TierCount(tier=1, instances=cold_instances, bytes=cold_bytes),
        ],  # fmt: skip
        hot_studies=int(row["studies"]) - int(row["cold_studies"]),
        cold_studies=int(row["cold_studies"]) - int(row["mixed"]),
        mixed_studies=int(row["mixed"]),
    )


async def study_tiers(pool: asyncpg.Pool, study_uid: str) -> list[TierCount]:
    rows = await pool.fetch(
        """SELECT i.tier, count(*) AS instances, coalesce(sum(i.file_size), 0)::bigint AS bytes
             FROM instance i JOIN study st ON st.pk = i.study_pk
            WHERE st.study_uid = $1 GROUP BY i.tier ORDER BY i.tier""",
        study_uid,
    )
    return [TierCount(**dict(r)) for r in rows]


async def all_hot(conn: Any) -> None:
    """A restore puts every file into the hot storage: the rows say so."""
    await conn.execute("UPDATE instance SET tier = 0 WHERE tier <> 0")
    await conn.execute("UPDATE trash_instance SET tier = 0 WHERE tier <> 0")


async def read_since_moved(pool: asyncpg.Pool, limit: int = 100) -> list[str]:
    """Studies with instances in the cold tier that were read after their last move:
    what a recall on read brings back."""
    rows = await pool.fetch(
        """SELECT st.study_uid FROM study st
            WHERE st.last_read_at > st.tiered_at
              AND EXISTS (SELECT 1 FROM instance c WHERE c.study_pk = st.pk AND c.tier <> 0)
            ORDER BY st.last_read_at LIMIT $1""",
        limit,
    )
    return [r["study_uid"] for r in rows]
