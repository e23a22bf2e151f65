"""Index side of the lifecycle (issue #15): trash, restore, purge, rejection, correction.

Every change runs in one transaction that first locks the study row (``FOR UPDATE``):
changes of one study run one after another, and an ingest batch into the study waits
for the change to commit (its foreign-key check on the study row conflicts with the
lock; :func:`app.index.instances.commit_batch` retries when the study is gone). Readers
never wait: they see the study before or after the change, whole (MVCC).

Hidden instances (deleted, rejected) leave the ``instance`` table for ``trash_instance``
(schemas/008), so no reader can show one by forgetting a filter; the aggregates of their
study and series are recomputed in the same transaction. Each change announces the
study it touched (:func:`app.index.instances.notify_study_changed`) and writes its audit
event, with old and new values, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import asyncpg
import msgspec

from app.dicom.levels import name_words
from app.errors import NotFound
from app.index.database import INDEX_ERRORS, index_failure
from app.index.instances import notify_study_changed

DELETED = "deleted"
REJECTED = "rejected"

_columns: dict[str, list[str]] = {}


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    """The table's columns in order (read once per process: migrations run before)."""
    found = _columns.get(table)
    if found is None:
        rows = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            table,
        )
        found = _columns[table] = [r[0] for r in rows]
    return found


def _list(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{n}" for n in names)


class Trashed(msgspec.Struct):
    """What one change moved into (or out of) the trash."""

    study_uid: str
    series_uids: list[str] = []
    sop_uids: list[str] = []
    #: trash row ids (the rows a zero-day trash purges at once)
    ids: list[int] = []
    #: restore: instances left in the trash because the same UID is stored again
    conflicts: list[str] = []


async def lock_study(conn: asyncpg.Connection, study_uid: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM study WHERE study_uid = $1 FOR UPDATE", study_uid)


async def refresh_aggregates(conn: asyncpg.Connection, study_pk: int) -> None:
    """Recompute the study's and its series' counts and attributes from their instances
    (PS3.18 10.6.3.3: NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy,
    SOPClassesInStudy, NumberOfSeriesRelatedInstances); drop empty series and an empty
    study."""
    await conn.execute(
        """UPDATE series se SET num_instances = n.count FROM (
               SELECT se2.pk, count(i.pk) AS count FROM series se2
               LEFT JOIN instance i ON i.series_pk = se2.pk
               WHERE se2.study_pk = $1 GROUP BY se2.pk) n
           WHERE se.pk = n.pk AND se.num_instances <> n.count""",
        study_pk,
    )
    await conn.execute("DELETE FROM series WHERE study_pk = $1 AND num_instances = 0", study_pk)
    row = await conn.fetchrow(
        """UPDATE study SET
               num_instances = (SELECT count(*) FROM instance WHERE study_pk = $1),
               num_series = (SELECT count(*) FROM series WHERE study_pk = $1),
               size_bytes = (SELECT coalesce(sum(file_size), 0) FROM instance
                             WHERE study_pk = $1),
               modalities = ARRAY(SELECT DISTINCT modality FROM series
                                  WHERE study_pk = $1 AND modality IS NOT NULL ORDER BY 1),
               sop_classes = ARRAY(SELECT DISTINCT sop_class_uid FROM instance
                                   WHERE study_pk = $1 ORDER BY 1),
               updated_at = now()
           WHERE pk = $1 RETURNING num_instances""",
        study_pk,
    )
    if row is None or row[0] == 0:
        await conn.execute("DELETE FROM study WHERE pk = $1", study_pk)


async def audit(
    conn: asyncpg.Connection,
    who: str,
    action: str,
    *,
    studies: Sequence[str] = (),
    series: Sequence[str] = (),
    instances: Sequence[str] = (),
    detail: dict[str, Any] | None = None,
) -> None:
    """The audit event of a lifecycle change, in the change's own transaction: it is
    recorded if and only if the change is."""
    await conn.execute(
        """INSERT INTO audit_event (at, who, action, method, outcome, status, study_uids,
               series_uids, sop_instance_uids, detail)
           VALUES (now(), $1, $2, NULL, 'success', 0, $3, $4, $5, $6)""",
        who,
        action,
        list(dict.fromkeys(studies)),
        list(dict.fromkeys(series)),
        list(dict.fromkeys(instances)),
        msgspec.json.encode(detail) if detail is not None else None,
    )


# -- moving instances into the trash ---------------------------------------------------


async def trash_instances(
    conn: asyncpg.Connection,
    study: asyncpg.Record,
    *,
    series_uid: str | None,
    sop_uids: Sequence[str] | None,
    who: str,
    reason: str,
    expires: dt.datetime,
) -> Trashed:
    """Move the study's instances (all, one series', or those listed) into the trash, in
    the caller's transaction, which holds the study's lock."""
    rows = await conn.fetch(
        """SELECT i.pk, i.sop_instance_uid, i.file_key, se.series_uid FROM instance i
           JOIN series se ON se.pk = i.series_pk
           WHERE i.study_pk = $1 AND ($2::text IS NULL OR se.series_uid = $2)
             AND ($3::text[] IS NULL OR i.sop_instance_uid = ANY($3::text[]))""",
        study["pk"],
        series_uid,
        list(sop_uids) if sop_uids is not None else None,
    )
    out = Trashed(study["study_uid"])
    if not rows:
        return out
    pks = [r["pk"] for r in rows]
    out.series_uids = sorted({r["series_uid"] for r in rows})
    out.sop_uids = [r["sop_instance_uid"] for r in rows]
    # the rows needed to bring the study and its series back
    study_cols = await columns(conn, "study")
    await conn.execute("DELETE FROM trash_study WHERE study_uid = $1", study["study_uid"])
    await conn.execute(
        f"INSERT INTO trash_study ({_list(study_cols)})"
        f" SELECT {_list(study_cols)} FROM study WHERE pk = $1",
        study["pk"],
    )
    series_cols = await columns(conn, "series")
    await conn.execute(
        "DELETE FROM trash_series WHERE series_uid = ANY($1::text[])", out.series_uids
    )
    await conn.execute(
        f"INSERT INTO trash_series ({_list(series_cols)}, study_uid)"
        f" SELECT {_list(series_cols)}, $2 FROM series"
        " WHERE study_pk = $1 AND series_uid = ANY($3::text[])",
        study["pk"],
        study["study_uid"],
        out.series_uids,
    )
    cols = await columns(conn, "instance")
    ids = await conn.fetch(
        f"""INSERT INTO trash_instance ({_list(cols)}, study_uid, series_uid, reason,
                deleted_by, expires_at)
            SELECT {_list(cols, "i.")}, $2, se.series_uid, $3, $4, $5
            FROM instance i JOIN series se ON se.pk = i.series_pk
            WHERE i.pk = ANY($1::bigint[]) RETURNING id""",
        pks,
        study["study_uid"],
        reason,
        who,
        expires,
    )
    out.ids = [r[0] for r in ids]
    await conn.execute("DELETE FROM instance WHERE pk = ANY($1::bigint[])", pks)
    await notify_study_changed(conn, out.study_uid)
    await refresh_aggregates(conn, study["pk"])
    return out


async def delete(
    pool: asyncpg.Pool,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    *,
    who: str,
    expires: dt.datetime,
) -> Trashed:
    """Delete a study, a series of it or one instance into the trash (404 when nothing
    of it is stored)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            study = await lock_study(conn, study_uid)
            out = Trashed(study_uid)
            if study is not None:
                out = await trash_instances(
                    conn,
                    study,
                    series_uid=series_uid,
                    sop_uids=[sop_uid] if sop_uid is not None else None,
                    who=who,
                    reason=DELETED,
                    expires=expires,
                )
            if not out.sop_uids:
                raise NotFound(_describe(study_uid, series_uid, sop_uid))
            # deleting a rejection note revokes its rejections: what it hid comes back
            # from the trash (IHE RAD TF-2 4.66, IOCM)
            revoked = await conn.fetch(
                "SELECT sop_instance_uid, study_uid FROM rejection"
                " WHERE note_uid = ANY($1::text[]) ORDER BY study_uid",
                out.sop_uids,
            )
            for revoked_study in sorted({r[1] for r in revoked}):
                back = [r[0] for r in revoked if r[1] == revoked_study]
                await restore_in(conn, revoked_study, None, back, who=who)
            await conn.execute(
                "DELETE FROM rejection WHERE note_uid = ANY($1::text[])", out.sop_uids
            )
            await conn.execute(
                "DELETE FROM key_object_note WHERE note_uid = ANY($1::text[])", out.sop_uids
            )
            await audit(
                conn,
                who,
                "delete",
                studies=[study_uid],
                series=out.series_uids,
                instances=out.sop_uids,
                detail={
                    "instances": len(out.sop_uids),
                    "expires": expires.isoformat(),
                    "revoked_rejections": [r[0] for r in revoked],
                },
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the delete failed", exc, client_values=False) from exc
    return out


def _describe(study: str, series: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"no instance {sop} in series {series} of study {study} is stored here"
    if series is not None:
        return f"no series {series} of study {study} is stored here"
    return f"no study {study} is stored here"


# -- restoring --------------------------------------------------------------------------


async def restore(
    pool: asyncpg.Pool,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    *,
    who: str,
) -> Trashed:
    """Bring trashed instances of a study (or of some of its series) back, with their
    study and series rows where those are gone. An instance whose SOP Instance UID is
    stored again meanwhile stays in the trash (``conflicts``). Restoring a rejected
    instance revokes its rejection."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            out = await restore_in(conn, study_uid, series_uids, None, who=who)
    except INDEX_ERRORS as exc:
        raise index_failure("the restore failed", exc, client_values=False) from exc
    if not out.sop_uids and not out.conflicts:
        raise NotFound(f"nothing of study {study_uid} is in the trash")
    return out


async def restore_in(
    conn: asyncpg.Connection,
    study_uid: str,
    series_uids: Sequence[str] | None,
    sop_uids: Sequence[str] | None,
    *,
    who: str,
) -> Trashed:
    """:func:`restore` in the caller's transaction; ``sop_uids``: only these."""
    out = Trashed(study_uid)
    study = await lock_study(conn, study_uid)
    rows = await conn.fetch(
        """SELECT DISTINCT ON (t.sop_instance_uid) t.id, t.sop_instance_uid,
               t.series_uid, (i.pk IS NOT NULL) AS taken
           FROM trash_instance t
           LEFT JOIN instance i ON i.sop_instance_uid = t.sop_instance_uid
           WHERE t.study_uid = $1
             AND ($2::text[] IS NULL OR t.series_uid = ANY($2::text[]))
             AND ($3::text[] IS NULL OR t.sop_instance_uid = ANY($3::text[]))
           ORDER BY t.sop_instance_uid, t.id DESC""",
        study_uid,
        list(series_uids) if series_uids is not None else None,
        list(sop_uids) if sop_uids is not None else None,
    )
    if not rows:
        return out
    wanted = [r for r in rows if not r["taken"]]
    if study is None:
        study = await _recreate_study(conn, study_uid)
    series_pks = await _series_for(conn, study, {r["series_uid"] for r in wanted})
    wanted = [r for r in wanted if r["series_uid"] in series_pks]
    out.conflicts = [r["sop_instance_uid"] for r in rows if r not in wanted]
    if wanted:
        cols = await columns(conn, "instance")
        moved = [c for c in cols if c not in ("series_pk", "study_pk")]
        ids = [r["id"] for r in wanted]
        restored = await conn.fetch(
            f"""INSERT INTO instance ({_list(moved)}, series_pk, study_pk)
                SELECT {_list(moved, "t.")}, se.pk, $2 FROM trash_instance t
                JOIN series se ON se.series_uid = t.series_uid
                WHERE t.id = ANY($1::bigint[])
                ON CONFLICT (sop_instance_uid) DO NOTHING
                RETURNING sop_instance_uid, file_key""",
            ids,
            study["pk"],
        )
        out.sop_uids = [r[0] for r in restored]
        await conn.execute(
            "DELETE FROM trash_instance WHERE id = ANY($1::bigint[])"
            " AND sop_instance_uid = ANY($2::text[])",
            ids,
            out.sop_uids,
        )
        out.series_uids = sorted({r["series_uid"] for r in wanted})
    revoked = await conn.fetch(
        "DELETE FROM rejection WHERE sop_instance_uid = ANY($1::text[]) RETURNING note_uid",
        out.sop_uids,
    )
    await notify_study_changed(conn, study_uid)
    await refresh_aggregates(conn, study["pk"])
    await _forget_trashed_rows(conn, [study_uid])
    await audit(
        conn,
        who,
        "restore",
        studies=[study_uid],
        series=out.series_uids,
        instances=out.sop_uids,
        detail={
            "instances": len(out.sop_uids),
            "conflicts": out.conflicts,
            "revoked_rejections_of": sorted({r[0] for r in revoked}),
        },
    )
    return out


async def _recreate_study(conn: asyncpg.Connection, study_uid: str) -> asyncpg.Record:
    cols = [c for c in await columns(conn, "study") if c != "pk"]
    await conn.execute(
        f"INSERT INTO study ({_list(cols)}) SELECT {_list(cols)} FROM trash_study"
        " WHERE study_uid = $1 ON CONFLICT (study_uid) DO NOTHING",
        study_uid,
    )
    study = await lock_study(conn, study_uid)
    if study is None:
        raise NotFound(f"the trash has no record of study {study_uid}")
    await set_name_words(conn, study["pk"], study["patient_name"])
    return study


async def set_name_words(conn: asyncpg.Connection, study_pk: int, name: str | None) -> None:
    """The study's fuzzy-matching words (schemas/002) for its PatientName's alphabetic
    group, replacing those it had."""
    await conn.execute("DELETE FROM study_word WHERE study_pk = $1", study_pk)
    words = name_words(name)
    if words:
        await conn.execute(
            "INSERT INTO study_word (study_pk, word) SELECT $1, unnest($2::text[])"
            " ON CONFLICT DO NOTHING",
            study_pk,
            words,
        )


async def _series_for(
    conn: asyncpg.Connection, study: asyncpg.Record, series_uids: set[str]
) -> dict[str, int]:
    """Series pks in this study for the UIDs, recreated from the trash where gone; a
    series now stored under another study is left out."""
    uids = sorted(series_uids)
    found = {
        r[0]: (r[1], r[2])
        for r in await conn.fetch(
            "SELECT series_uid, pk, study_pk FROM series WHERE series_uid = ANY($1::text[])",
            uids,
        )
    }
    missing = [u for u in uids if u not in found]
    if missing:
        cols = [c for c in await columns(conn, "series") if c not in ("pk", "study_pk")]
        for r in await conn.fetch(
            f"""INSERT INTO series ({_list(cols)}, study_pk)
                SELECT {_list(cols)}, $2 FROM trash_series WHERE series_uid = ANY($1::text[])
                ON CONFLICT (series_uid) DO NOTHING RETURNING series_uid, pk, study_pk""",
            missing,
            study["pk"],
        ):
            found[r[0]] = (r[1], r[2])
    return {u: pk for u, (pk, owner) in found.items() if owner == study["pk"]}


async def _forget_trashed_rows(conn: asyncpg.Connection, study_uids: Sequence[str]) -> None:
    """Drop the study and series snapshots of these studies that no trashed instance
    needs any more (the trash's (study, series) index answers each probe)."""
    await conn.execute(
        "DELETE FROM trash_series ts WHERE ts.study_uid = ANY($1::text[]) AND NOT EXISTS"
        " (SELECT 1 FROM trash_instance t WHERE t.study_uid = ts.study_uid"
        " AND t.series_uid = ts.series_uid)",
        list(study_uids),
    )
    await conn.execute(
        "DELETE FROM trash_study ts WHERE ts.study_uid = ANY($1::text[]) AND NOT EXISTS"
        " (SELECT 1 FROM trash_instance t WHERE t.study_uid = ts.study_uid)",
        list(study_uids),
    )


# -- purging ----------------------------------------------------------------------------


#: trash rows one purge transaction claims
PURGE_BATCH = 1000


async def purge_batch(
    pool: asyncpg.Pool,
    *,
    before: dt.datetime | None = None,
    deleted_before: dt.datetime | None = None,
    ids: Sequence[int] | None = None,
    retire: Callable[[list[str]], Awaitable[object]],
    abandon: Callable[[object], Awaitable[None]],
    who: str,
) -> tuple[int, list[str], object] | None:
    """Claim up to :data:`PURGE_BATCH` trash rows (``FOR UPDATE SKIP LOCKED``: nodes
    purging at once take different rows; DESIGN.md decision 10) that expired before
    ``before``, were deleted before ``deleted_before``, or are listed in ``ids``; have
    their files retired (``retire``, the blob store's intent, written before the rows
    go); delete the rows. Returns (rows purged, the files no row references any more,
    the intent), for the caller to delete the files after the commit; None when there
    is nothing to purge."""
    intent: object = None
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id, file_key, sop_instance_uid, study_uid FROM trash_instance
                   WHERE ($1::timestamptz IS NULL OR expires_at <= $1)
                     AND ($2::timestamptz IS NULL OR deleted_at <= $2)
                     AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))
                   ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED""",
                before,
                deleted_before,
                list(ids) if ids is not None else None,
                PURGE_BATCH,
            )
            if not rows:
                return None
            claimed = [r[0] for r in rows]
            keys = [r[1] for r in rows]
            # a file another row still references is never deleted; a key names its SOP
            # Instance UID, so an instance row with that key has that UID (unique index)
            still = {
                r[0]
                for r in await conn.fetch(
                    "SELECT file_key FROM instance WHERE sop_instance_uid = ANY($2::text[])"
                    " AND file_key = ANY($1::text[])"
                    " UNION SELECT file_key FROM trash_instance WHERE file_key = ANY($1::text[])"
                    " AND NOT id = ANY($3::bigint[])",
                    keys,
                    [r[2] for r in rows],
                    claimed,
                )
            }
            unreferenced = [k for k in keys if k not in still]
            intent = await retire(unreferenced)
            await conn.execute("DELETE FROM trash_instance WHERE id = ANY($1::bigint[])", claimed)
            studies = sorted({r[3] for r in rows})
            await _forget_trashed_rows(conn, studies)
            await audit(
                conn,
                who,
                "purge",
                studies=studies,
                instances=[r[2] for r in rows],
                detail={"instances": len(rows)},
            )
    except BaseException as exc:
        if intent is not None:
            await abandon(intent)  # the rows stay, and so do their files
        if isinstance(exc, INDEX_ERRORS):
            raise index_failure("the purge failed", exc, client_values=False) from exc
        raise
    return len(rows), unreferenced, intent


class TrashedStudy(msgspec.Struct):
    study_uid: str
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    series: int
    instances: int
    size_bytes: int
    reasons: list[str]
    deleted_at: str
    expires_at: str


async def list_trash(pool: asyncpg.Pool, limit: int = 1000) -> list[TrashedStudy]:
    rows = await pool.fetch(
        """SELECT t.study_uid, s.patient_name, s.patient_id, s.study_date,
               s.study_description, count(DISTINCT t.series_uid) AS series,
               count(*) AS instances, coalesce(sum(t.file_size), 0) AS size_bytes,
               array_agg(DISTINCT t.reason) AS reasons, max(t.deleted_at) AS deleted_at,
               min(t.expires_at) AS expires_at
           FROM trash_instance t LEFT JOIN trash_study s ON s.study_uid = t.study_uid
           GROUP BY t.study_uid, s.patient_name, s.patient_id, s.study_date,
               s.study_description
           ORDER BY max(t.deleted_at) DESC LIMIT $1""",
        limit,
    )
    return [
        TrashedStudy(
            study_uid=r["study_uid"],
            patient_name=r["patient_name"],
            patient_id=r["patient_id"],
            study_date=r["study_date"],
            study_description=r["study_description"],
            series=r["series"],
            instances=r["instances"],
            size_bytes=r["size_bytes"],
            reasons=sorted(r["reasons"]),
            deleted_at=r["deleted_at"].isoformat(),
            expires_at=r["expires_at"].isoformat(),
        )
        for r in rows
    ]


# -- rejection (IOCM) -------------------------------------------------------------------


async def rejected(pool: asyncpg.Pool, sop_uids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Rejected SOP Instance UIDs among these: uid -> (note UID, code)."""
    if not sop_uids:
        return {}
    try:
        rows = await pool.fetch(
            "SELECT sop_instance_uid, note_uid, code FROM rejection"
            " WHERE sop_instance_uid = ANY($1::text[])",
            list(sop_uids),
        )
    except INDEX_ERRORS as exc:
        raise index_failure("the index lookup failed", exc, client_values=False) from exc
    return {r[0]: (r[1], r[2]) for r in rows}


async def unapplied_notes(pool: asyncpg.Pool, sop_class: str) -> list[tuple[str, bytes]]:
    """Stored Key Object Selection documents not yet looked at as rejection notes:
    (SOP Instance UID, metadata)."""
    rows = await pool.fetch(
        """SELECT i.sop_instance_uid, i.metadata FROM instance i
           WHERE i.sop_class_uid = $1 AND NOT EXISTS
               (SELECT 1 FROM key_object_note n WHERE n.note_uid = i.sop_instance_uid)""",
        sop_class,
    )
    return [(r[0], bytes(r[1])) for r in rows]


async def looked_at(pool: asyncpg.Pool, note_uids: Sequence[str]) -> None:
    """Record Key Object Selection documents that are not rejection notes."""
    await pool.execute(
        "INSERT INTO key_object_note (note_uid) SELECT unnest($1::text[])"
        " ON CONFLICT (note_uid) DO NOTHING",
        list(note_uids),
    )


async def reject(
    pool: asyncpg.Pool,
    note_uid: str,
    code: str,
    references: Sequence[tuple[str, str, str]],
    *,
    who: str,
    expires: dt.datetime,
) -> list[Trashed]:
    """Record a rejection note's rejections and move the referenced instances that are
    stored into the trash. ``references``: (study, series, SOP Instance UID)."""
    out: list[Trashed] = []
    by_study: dict[str, list[tuple[str, str, str]]] = {}
    for ref in references:
        by_study.setdefault(ref[0], []).append(ref)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO key_object_note (note_uid, code) VALUES ($1, $2)"
                " ON CONFLICT (note_uid) DO UPDATE SET code = excluded.code",
                note_uid,
                code,
            )
            for study_uid in sorted(by_study):
                refs = by_study[study_uid]
                study = await lock_study(conn, study_uid)
                await conn.execute(
                    """INSERT INTO rejection (sop_instance_uid, study_uid, series_uid,
                           note_uid, code)
                       SELECT sop, $1, series, $2, $3
                       FROM unnest($4::text[], $5::text[]) AS r(series, sop)
                       WHERE sop <> $2
                       ON CONFLICT (sop_instance_uid) DO NOTHING""",
                    study_uid,
                    note_uid,
                    code,
                    [r[1] for r in refs],
                    [r[2] for r in refs],
                )
                if study is None:
                    continue
                # only instances of the series the note names (PS3.3 C.17.2.1)
                pairs = {(r[1], r[2]) for r in refs if r[2] != note_uid}
                rows = await conn.fetch(
                    """SELECT i.sop_instance_uid, se.series_uid FROM instance i
                       JOIN series se ON se.pk = i.series_pk
                       WHERE i.study_pk = $1 AND i.sop_instance_uid = ANY($2::text[])""",
                    study["pk"],
                    [p[1] for p in pairs],
                )
                hidden = [r[0] for r in rows if (r[1], r[0]) in pairs]
                if not hidden:
                    continue
                trashed = await trash_instances(
                    conn,
                    study,
                    series_uid=None,
                    sop_uids=hidden,
                    who=who,
                    reason=f"{REJECTED}:{code}",
                    expires=expires,
                )
                out.append(trashed)
                await audit(
                    conn,
                    who,
                    "reject",
                    studies=[study_uid],
                    series=trashed.series_uids,
                    instances=trashed.sop_uids,
                    detail={"note": note_uid, "code": code, "instances": len(hidden)},
                )
    except INDEX_ERRORS as exc:
        raise index_failure("the rejection failed", exc, client_values=False) from exc
    return out
