"""Index writes of ingest: look up existing instances, commit a batch of new ones.

A batch is committed in one transaction: study and series rows are upserted (patient and
study attributes from the first instance that created them), instance rows inserted,
and the aggregates (number of series and instances, ModalitiesInStudy, SOPClassesInStudy)
updated. Rows are locked in UID order so concurrent batches cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from app.dicom.analysis import Analysis
from app.index.database import INDEX_ERRORS, index_failure


class Existing(msgspec.Struct, frozen=True):
    pk: int
    sop_instance_uid: str
    file_sha256: str
    file_key: str
    file_size: int = 0


class NewInstance(msgspec.Struct, frozen=True):
    analysis: Analysis
    file_key: str
    #: pk of a row this instance replaces (on_duplicate = "replace"), else None
    replaces: int | None = None


async def find_existing(pool: asyncpg.Pool, sop_uids: Sequence[str]) -> dict[str, Existing]:
    if not sop_uids:
        return {}
    try:
        rows = await pool.fetch(
            "SELECT pk, sop_instance_uid, file_sha256, file_key, file_size FROM instance"
            " WHERE sop_instance_uid = ANY($1::text[])",
            list(sop_uids),
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index lookup failed", exc, client_values=False) from exc
    return {r["sop_instance_uid"]: Existing(**dict(r)) for r in rows}


async def stored_metadata(pool: asyncpg.Pool, pks: Sequence[int]) -> dict[int, bytes]:
    """The DICOM JSON kept at ingest of these instances (as received: corrections are
    applied at read time), by primary key."""
    if not pks:
        return {}
    try:
        rows = await pool.fetch(
            "SELECT pk, metadata FROM instance WHERE pk = ANY($1::bigint[])", list(pks)
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index lookup failed", exc, client_values=False) from exc
    return {r["pk"]: r["metadata"] for r in rows}


async def referenced_keys(pool: asyncpg.Pool, keys: list[str], tier: int | None = None) -> set[str]:
    """The keys an index row references: a stored instance's, or a trashed one's (its
    file is kept until the purge; schemas/008); with ``tier``, only rows whose blob is
    in that storage tier (schemas/011)."""
    rows = await pool.fetch(
        "SELECT file_key FROM instance WHERE file_key = ANY($1::text[])"
        " AND ($2::smallint IS NULL OR tier = $2)"
        " UNION SELECT file_key FROM trash_instance WHERE file_key = ANY($1::text[])"
        " AND ($2::smallint IS NULL OR tier = $2)",
        keys,
        tier,
    )
    return {r["file_key"] for r in rows}


# Multi-row statements: a batch costs the same handful of round trips whatever its size.
# Existing study / series rows are not locked here (DO NOTHING); only the aggregate
# updates at the end of the transaction lock them, briefly, so concurrent batches into
# one study do not queue behind each other's whole transaction.

_INSERT_STUDIES = """
INSERT INTO study (study_uid, patient_name, patient_id, issuer_of_patient_id,
    patient_birth_date, patient_sex, study_date, study_time, accession_number, study_id,
    referring_physician_name, study_description, attrs)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[])
ON CONFLICT (study_uid) DO NOTHING
RETURNING pk, study_uid
"""

_INSERT_WORDS = """
INSERT INTO study_word (study_pk, word)
SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING
"""

_INSERT_SERIES = """
WITH ins AS (
    INSERT INTO series (study_pk, series_uid, modality, series_number, series_description,
        series_date, series_time, body_part_examined, pps_start_date, pps_start_time, attrs)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::jsonb[])
    ON CONFLICT (series_uid) DO NOTHING
    RETURNING series_uid
)
SELECT series_uid FROM ins
"""

_INSERT_INSTANCES = """
INSERT INTO instance (series_pk, study_pk, sop_instance_uid, sop_class_uid, instance_number,
    transfer_syntax_uid, rows, columns, bits_allocated, bits_stored, samples_per_pixel,
    photometric_interpretation, number_of_frames, file_key, file_size, file_sha256,
    frame_offsets, frame_lengths, frame_first, bulk, metadata, attrs, pixel_representation,
    planar_configuration)
SELECT t.series_pk, t.study_pk, t.sop, t.cls, t.num, t.ts, t.r, t.c, t.ba, t.bs, t.spp, t.pi,
    t.nf, t.key, t.size, t.sha, t.offs::bigint[], t.lens::bigint[], t.firsts::int[], t.bulk,
    t.meta, t.attrs, t.pr, t.pc
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[], $6::text[],
    $7::int[], $8::int[], $9::int[], $10::int[], $11::int[], $12::text[], $13::int[],
    $14::text[], $15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[],
    $20::json[], $21::json[], $22::jsonb[], $23::smallint[], $24::smallint[])
    AS t(series_pk, study_pk, sop, cls, num, ts, r, c, ba, bs, spp, pi, nf, key, size, sha,
         offs, lens, firsts, bulk, meta, attrs, pr, pc)
ON CONFLICT (sop_instance_uid) DO NOTHING
RETURNING sop_instance_uid
"""

_ADD_TO_SERIES = """
UPDATE series SET num_instances = series.num_instances + d.n
FROM unnest($1::bigint[], $2::int[]) AS d(pk, n) WHERE series.pk = d.pk
"""

_ADD_TO_STUDY = """
UPDATE study SET num_instances = num_instances + $2,
    num_series = num_series + $3,
    size_bytes = size_bytes + $4,
    modalities = ARRAY(SELECT DISTINCT m FROM unnest(modalities || $5::text[]) m ORDER BY 1),
    sop_classes = ARRAY(SELECT DISTINCT c FROM unnest(sop_classes || $6::text[]) c ORDER BY 1),
    updated_at = now()
WHERE pk = $1
"""


def _int_array(values: list[int] | None) -> str | None:
    """A PostgreSQL array literal: cheaper to send than a nested array parameter."""
    return None if values is None else "{" + ",".join(map(str, values)) + "}"


#: the channel on which every change of a stored instance (replaced, and later deleted or
#: updated) is announced; delivered to listeners when the transaction commits
CHANGED_CHANNEL = "pictor_instance_changed"


#: a payload on CHANGED_CHANNEL naming a whole study (``study:<UID>``), not one instance
STUDY_PREFIX = "study:"


async def notify_study_changed(conn: asyncpg.Connection, study_uid: str) -> None:
    """Announce, in the caller's transaction, that instances of this study changed (a
    lifecycle change): one message, whatever the size of the study."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, STUDY_PREFIX + study_uid)


async def notify_changed(conn: asyncpg.Connection, sop_uids: Sequence[str]) -> None:
    """Announce, in the caller's transaction, that these instances changed: every
    server process (on every machine) drops what it cached of them at commit
    (DESIGN.md decision 8)."""
    if sop_uids:
        await conn.execute(
            "SELECT pg_notify($1, u) FROM unnest($2::text[]) AS u", CHANGED_CHANNEL, list(sop_uids)
        )


async def _remove_instance(conn: asyncpg.Connection, pk: int) -> str | None:
    """Delete one instance row and keep the aggregates true. Returns its file key."""
    row = await conn.fetchrow(
        "DELETE FROM instance WHERE pk = $1"
        " RETURNING series_pk, study_pk, file_key, file_size, sop_instance_uid",
        pk,
    )
    if row is None:
        return None
    await notify_changed(conn, [row["sop_instance_uid"]])
    series_pk, study_pk = row["series_pk"], row["study_pk"]
    left = await conn.fetchval(
        "UPDATE series SET num_instances = num_instances - 1 WHERE pk = $1 RETURNING num_instances",
        series_pk,
    )
    if left == 0:
        await conn.execute("DELETE FROM series WHERE pk = $1", series_pk)
    await conn.execute(
        """UPDATE study SET num_instances = num_instances - 1,
               num_series = (SELECT count(*) FROM series WHERE study_pk = $1),
               size_bytes = size_bytes - $2,
               modalities = ARRAY(SELECT DISTINCT modality FROM series
                                  WHERE study_pk = $1 AND modality IS NOT NULL ORDER BY 1),
               sop_classes = ARRAY(SELECT DISTINCT sop_class_uid FROM instance
                                   WHERE study_pk = $1 ORDER BY 1),
               updated_at = now()
           WHERE pk = $1""",
        study_pk,
        row["file_size"],
    )
    await conn.execute("DELETE FROM study WHERE pk = $1 AND num_instances <= 0", study_pk)
    return str(row["file_key"])


INSERTED = "inserted"
#: another writer stored the same SOP Instance UID first
TAKEN = "taken"
#: the Series Instance UID is already stored under another study
SERIES_ELSEWHERE = "series-elsewhere"


async def _series_pks(conn: asyncpg.Connection, uids: list[str]) -> dict[str, tuple[int, int]]:
    """Series UID -> (pk, study pk)."""
    rows = await conn.fetch(
        "SELECT series_uid, pk, study_pk FROM series WHERE series_uid = ANY($1::text[])", uids
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def commit_batch(
    pool: asyncpg.Pool, items: Sequence[NewInstance]
) -> tuple[list[str], list[str]]:
    """Insert a batch in one transaction.

    Returns, per item, :data:`INSERTED`, :data:`TAKEN` or :data:`SERIES_ELSEWHERE`, and
    the file keys of the rows that were replaced (their files are deleted by the caller).
    """
    for attempt in range(3):
        try:
            return await _commit_once(pool, items)
        except (asyncpg.ForeignKeyViolationError, asyncpg.DeadlockDetectedError, _StudyGone) as exc:
            # a delete removed the study or series while the batch was on its way
            # (app.index.lifecycle), or PostgreSQL broke a lock cycle with another
            # writer by aborting this transaction: the batch is committed again, from
            # scratch (everything it did was rolled back)
            if attempt == 2:
                raise index_failure("the index commit failed", exc, client_values=False) from exc
        except INDEX_ERRORS as exc:
            # the database went away (or refused): the caller cannot know whether the
            # transaction committed, only that it may not have
            raise index_failure("the index commit failed", exc, client_values=False) from exc
    raise AssertionError("unreachable")


class _StudyGone(Exception):
    """A study of the batch was deleted while the batch was being committed."""


#: One transaction-scoped advisory lock per study of a batch, taken in one order (the
#: keys', sorted) before anything else. Without it two batches that share studies could
#: deadlock: each locks the studies it finds, then creates the rest, then locks the ones
#: another batch created meanwhile, so the rows were taken in different orders (found
#: with four clients storing interleaved instances of the same new studies). With it,
#: batches that share a study take its turn in the same order; batches that share none
#: never wait for each other (two studies whose keys collide make theirs take turns,
#: nothing worse). The two-key form, with its own first key, keeps these apart from the
#: archive's one-key advisory locks (feed, backup, tiers, migrations). Volatile calls in
#: the select list run after the ORDER BY (PostgreSQL 9.6+), so the order holds.
STUDY_LOCK_SPACE = 0x50495354  # "PIST"
_LOCK_STUDY_KEYS = f"""
SELECT pg_advisory_xact_lock({STUDY_LOCK_SPACE}, k)
  FROM (SELECT DISTINCT hashtext(u) AS k FROM unnest($1::text[]) AS u) AS keys
 ORDER BY k
"""


async def _lock_studies(conn: asyncpg.Connection, uids: list[str], pks: dict[str, int]) -> None:
    if not uids:
        return
    for row in await conn.fetch(
        "SELECT study_uid, pk FROM study WHERE study_uid = ANY($1::text[])"
        " ORDER BY study_uid FOR NO KEY UPDATE",
        uids,
    ):
        pks[row[0]] = row[1]


async def _commit_once(
    pool: asyncpg.Pool, items: Sequence[NewInstance]
) -> tuple[list[str], list[str]]:
    results = [TAKEN] * len(items)
    replaced: list[str] = []
    studies: dict[str, Analysis] = {}
    series: dict[str, Analysis] = {}
    for item in items:
        studies.setdefault(item.analysis.study_uid, item.analysis)
        series.setdefault(item.analysis.series_uid, item.analysis)
    uids = sorted(studies)
    try:
        async with pool.acquire() as conn, conn.transaction():
            # The batch's existing studies are locked first, in UID order, with the lock
            # the aggregate update at the end needs: a lifecycle change of the study
            # (app.index.lifecycle, which locks it first too) then runs wholly before or
            # after this batch, never waiting on it while it waits on the change.
            await conn.execute(_LOCK_STUDY_KEYS, uids)
            study_pks: dict[str, int] = {}
            await _lock_studies(conn, uids, study_pks)
            for item in sorted(items, key=lambda it: it.analysis.sop_instance_uid):
                if item.replaces is not None:
                    key = await _remove_instance(conn, item.replaces)
                    if key is not None:
                        replaced.append(key)
            s = [studies[u].study for u in uids]
            created_studies = await conn.fetch(
                _INSERT_STUDIES,
                uids,
                *([row[col] for row in s] for col in _STUDY_COLUMNS),
                [studies[u].study_json for u in uids],
            )
            words = [(r[0], w) for r in created_studies for w in studies[r[1]].name_words]
            if words:
                await conn.execute(_INSERT_WORDS, [w[0] for w in words], [w[1] for w in words])
            for row in created_studies:
                study_pks[row[1]] = row[0]
            # created by another batch since the first lock: locked now
            await _lock_studies(conn, [u for u in uids if u not in study_pks], study_pks)
            if any(u not in study_pks for u in uids):
                raise _StudyGone  # deleted meanwhile: the batch starts again
            suids = sorted(series)
            r = [series[u].series for u in suids]
            created = await conn.fetch(
                _INSERT_SERIES,
                [study_pks[series[u].study_uid] for u in suids],
                suids,
                *([row[col] for row in r] for col in _SERIES_COLUMNS),
                [series[u].series_json for u in suids],
            )
            new_series = {row[0] for row in created}
            series_pks = await _series_pks(conn, suids)

            rows: list[tuple[int, NewInstance]] = []
            for i, item in enumerate(items):
                a = item.analysis
                series_pk, owner = series_pks[a.series_uid]
                if owner != study_pks[a.study_uid]:
                    results[i] = SERIES_ELSEWHERE
                    continue
                rows.append((i, item))
            inserted: set[str] = set()
            if rows:
                cols = _instance_columns([it for _, it in rows], series_pks, study_pks)
                inserted = {r[0] for r in await conn.fetch(_INSERT_INSTANCES, *cols)}
            per_series: dict[int, int] = {}
            per_study: dict[int, list[Any]] = {}
            for i, item in rows:
                a = item.analysis
                if a.sop_instance_uid not in inserted:
                    continue
                results[i] = INSERTED
                series_pk = series_pks[a.series_uid][0]
                per_series[series_pk] = per_series.get(series_pk, 0) + 1
                agg = per_study.setdefault(study_pks[a.study_uid], [0, 0, set(), set(), 0])
                agg[0] += 1
                agg[1] += a.size
                if a.series["modality"]:
                    agg[2].add(a.series["modality"])
                agg[3].add(a.sop_class_uid)
            for suid in new_series:
                pk = study_pks[series[suid].study_uid]
                if pk in per_study:
                    per_study[pk][4] += 1
            if per_series:
                keys = sorted(per_series)
                await conn.execute(_ADD_TO_SERIES, keys, [per_series[k] for k in keys])
            for study_pk in sorted(per_study):
                count, size, modalities, classes, added_series = per_study[study_pk]
                await conn.execute(
                    _ADD_TO_STUDY,
                    study_pk,
                    count,
                    added_series,
                    size,
                    sorted(modalities),
                    sorted(classes),
                )
            if len(per_study) < len(study_pks) or len(per_series) < len(series_pks):
                # rows created only for instances that were then refused
                await conn.execute(
                    "DELETE FROM series WHERE pk = ANY($1::bigint[]) AND num_instances = 0",
                    [v[0] for v in series_pks.values()],
                )
                await conn.execute(
                    "DELETE FROM study WHERE pk = ANY($1::bigint[]) AND num_instances = 0",
                    list(study_pks.values()),
                )
    except (asyncpg.ForeignKeyViolationError, _StudyGone):
        raise
    except INDEX_ERRORS as exc:
        raise index_failure("the index commit failed", exc, client_values=False) from exc
    return results, replaced


_STUDY_COLUMNS = (
    "patient_name",
    "patient_id",
    "issuer_of_patient_id",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "referring_physician_name",
    "study_description",
)
_SERIES_COLUMNS = (
    "modality",
    "series_number",
    "series_description",
    "series_date",
    "series_time",
    "body_part_examined",
    "pps_start_date",
    "pps_start_time",
)


def _instance_columns(
    items: list[NewInstance],
    series_pks: dict[str, tuple[int, int]],
    study_pks: dict[str, int],
) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(24)]
    for item in items:
        a = item.analysis
        inst = a.instance
        fr = a.frames
        row = (
            series_pks[a.series_uid][0],
            study_pks[a.study_uid],
            a.sop_instance_uid,
            a.sop_class_uid,
            inst["instance_number"],
            a.transfer_syntax,
            inst["rows"],
            inst["columns"],
            inst["bits_allocated"],
            inst["bits_stored"],
            inst["samples_per_pixel"],
            inst["photometric_interpretation"],
            inst["number_of_frames"],
            item.file_key,
            a.size,
            a.sha256,
            _int_array(fr.offsets) if fr else None,
            _int_array(fr.lengths) if fr else None,
            _int_array(fr.first) if fr else None,
            msgspec.json.encode(a.bulk),
            a.metadata,
            a.instance_json,
            inst["pixel_representation"],
            inst["planar_configuration"],
        )
        for col, value in zip(cols, row):
            col.append(value)
    return cols
