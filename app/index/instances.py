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
from app.errors import ServiceUnavailable


class Existing(msgspec.Struct, frozen=True):
    pk: int
    sop_instance_uid: str
    file_sha256: str
    file_key: str


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
            "SELECT pk, sop_instance_uid, file_sha256, file_key FROM instance"
            " WHERE sop_instance_uid = ANY($1::text[])",
            list(sop_uids),
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServiceUnavailable(f"index lookup failed: {exc}") from exc
    return {r["sop_instance_uid"]: Existing(**dict(r)) for r in rows}


async def referenced_keys(pool: asyncpg.Pool, keys: list[str]) -> set[str]:
    rows = await pool.fetch(
        "SELECT file_key FROM instance WHERE file_key = ANY($1::text[])", keys
    )
    return {r["file_key"] for r in rows}


_UPSERT_STUDY = """
INSERT INTO study (study_uid, patient_name, patient_id, issuer_of_patient_id,
    patient_birth_date, patient_sex, study_date, study_time, accession_number, study_id,
    referring_physician_name, study_description, attrs)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (study_uid) DO UPDATE SET updated_at = now()
RETURNING pk
"""

_UPSERT_SERIES = """
WITH ins AS (
    INSERT INTO series (study_pk, series_uid, modality, series_number, series_description,
        series_date, series_time, body_part_examined, pps_start_date, pps_start_time, attrs)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
    ON CONFLICT (series_uid) DO NOTHING
    RETURNING pk, study_pk
)
SELECT pk, study_pk, true AS created FROM ins
UNION ALL
SELECT pk, study_pk, false FROM series WHERE series_uid = $2 AND NOT EXISTS (SELECT 1 FROM ins)
"""

_INSERT_INSTANCE = """
INSERT INTO instance (series_pk, study_pk, sop_instance_uid, sop_class_uid, instance_number,
    transfer_syntax_uid, rows, columns, bits_allocated, bits_stored, samples_per_pixel,
    photometric_interpretation, number_of_frames, file_key, file_size, file_sha256,
    frame_offsets, frame_lengths, frame_first, bulk, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
    $17, $18, $19, $20, $21)
ON CONFLICT (sop_instance_uid) DO NOTHING
RETURNING pk
"""


async def _remove_instance(conn: asyncpg.Connection, pk: int) -> str | None:
    """Delete one instance row and keep the aggregates true. Returns its file key."""
    row = await conn.fetchrow(
        "DELETE FROM instance WHERE pk = $1 RETURNING series_pk, study_pk, file_key, file_size",
        pk,
    )
    if row is None:
        return None
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


async def commit_batch(
    pool: asyncpg.Pool, items: Sequence[NewInstance]
) -> tuple[list[str], list[str]]:
    """Insert a batch in one transaction.

    Returns, per item, :data:`INSERTED`, :data:`TAKEN` or :data:`SERIES_ELSEWHERE`, and
    the file keys of the rows that were replaced (their files are deleted by the caller).
    """
    order = sorted(
        range(len(items)),
        key=lambda i: (
            items[i].analysis.study_uid,
            items[i].analysis.series_uid,
            items[i].analysis.sop_instance_uid,
        ),
    )
    results = [TAKEN] * len(items)
    replaced: list[str] = []
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i in order:
                if items[i].replaces is not None:
                    key = await _remove_instance(conn, items[i].replaces)
                    if key is not None:
                        replaced.append(key)
            study_pks: dict[str, int] = {}
            series_pks: dict[str, int] = {}
            new_series: dict[int, int] = {}
            per_series: dict[int, int] = {}
            per_study: dict[int, list[Any]] = {}
            for i in order:
                a = items[i].analysis
                study_pk = study_pks.get(a.study_uid)
                if study_pk is None:
                    s = a.study
                    study_pk = await conn.fetchval(
                        _UPSERT_STUDY,
                        a.study_uid,
                        s["patient_name"],
                        s["patient_id"],
                        s["issuer_of_patient_id"],
                        s["patient_birth_date"],
                        s["patient_sex"],
                        s["study_date"],
                        s["study_time"],
                        s["accession_number"],
                        s["study_id"],
                        s["referring_physician_name"],
                        s["study_description"],
                        a.study_json,
                    )
                    study_pks[a.study_uid] = study_pk
                series_pk = series_pks.get(a.series_uid)
                if series_pk is None:
                    r = a.series
                    row = await conn.fetchrow(
                        _UPSERT_SERIES,
                        study_pk,
                        a.series_uid,
                        r["modality"],
                        r["series_number"],
                        r["series_description"],
                        r["series_date"],
                        r["series_time"],
                        r["body_part_examined"],
                        r["pps_start_date"],
                        r["pps_start_time"],
                        a.series_json,
                    )
                    series_pk = row["pk"]
                    if row["study_pk"] != study_pk:
                        results[i] = SERIES_ELSEWHERE
                        continue
                    series_pks[a.series_uid] = series_pk
                    if row["created"]:
                        new_series[study_pk] = new_series.get(study_pk, 0) + 1
                inst = a.instance
                fr = a.frames
                pk = await conn.fetchval(
                    _INSERT_INSTANCE,
                    series_pk,
                    study_pk,
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
                    items[i].file_key,
                    a.size,
                    a.sha256,
                    fr.offsets if fr else None,
                    fr.lengths if fr else None,
                    fr.first if fr else None,
                    msgspec.json.encode(a.bulk),
                    a.metadata,
                )
                if pk is None:
                    continue
                results[i] = INSERTED
                per_series[series_pk] = per_series.get(series_pk, 0) + 1
                agg = per_study.setdefault(study_pk, [0, 0, set(), set()])
                agg[0] += 1
                agg[1] += a.size
                if a.series["modality"]:
                    agg[2].add(a.series["modality"])
                agg[3].add(a.sop_class_uid)
            for series_pk in sorted(per_series):
                await conn.execute(
                    "UPDATE series SET num_instances = num_instances + $2 WHERE pk = $1",
                    series_pk,
                    per_series[series_pk],
                )
            for study_pk in sorted(per_study):
                count, size, modalities, classes = per_study[study_pk]
                await conn.execute(
                    """UPDATE study SET num_instances = num_instances + $2,
                           num_series = num_series + $3,
                           size_bytes = size_bytes + $4,
                           modalities = ARRAY(SELECT DISTINCT m FROM unnest(modalities || $5::text[]) m ORDER BY 1),
                           sop_classes = ARRAY(SELECT DISTINCT c FROM unnest(sop_classes || $6::text[]) c ORDER BY 1),
                           updated_at = now()
                       WHERE pk = $1""",
                    study_pk,
                    count,
                    new_series.get(study_pk, 0),
                    size,
                    sorted(modalities),
                    sorted(classes),
                )
            # a study row created only for instances that were then refused
            await conn.execute(
                "DELETE FROM study WHERE pk = ANY($1::bigint[]) AND num_instances = 0",
                list(study_pks.values()),
            )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise ServiceUnavailable(f"index commit failed: {exc}") from exc
    return results, replaced
