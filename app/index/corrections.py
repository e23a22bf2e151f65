"""Index side of corrections (issue #15): patient and study attributes changed in place.

One correction is one transaction holding the study's lock
(:func:`app.index.lifecycle.lock_study`) that changes one row: the study's columns, its
QIDO fragment (its trigger rebuilds the stored answers), its fuzzy-match words and its
patch, which its instances' metadata and Part 10 files get applied as they are read
(:mod:`app.index.retrieve`), so readers see the old or the new study, whole, and the cost
does not grow with the study. The values replaced are kept in ``study_update`` for
``pictor update --undo`` and in the audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from app.dicom.patch import COLUMNS, PATIENT_NAME, first_text
from app.errors import BadRequest, NotFound
from app.index.database import INDEX_ERRORS, index_failure
from app.index.feed import log_study_update
from app.index.instances import notify_study_changed
from app.index.lifecycle import audit, lock_study, set_name_words

UPDATE = "update"
UNDO = "undo"
MERGE = "merge"


class Correction(msgspec.Struct):
    study_uid: str
    id: int
    old: dict[str, Any]
    new: dict[str, Any]
    instances: int


async def _current(conn: asyncpg.Connection, study: asyncpg.Record) -> dict[str, Any]:
    """The study's attributes as its instances now show them: a stored instance's, with
    the study row's (corrected) attributes over them."""
    row = await conn.fetchrow(
        "SELECT metadata FROM instance WHERE study_pk = $1 ORDER BY pk LIMIT 1", study["pk"]
    )
    meta: dict[str, Any] = msgspec.json.decode(bytes(row[0])) if row is not None else {}
    attrs: dict[str, Any] = msgspec.json.decode(bytes(study["attrs"]))
    return {**meta, **attrs}


async def update_in(
    conn: asyncpg.Connection,
    study_uid: str,
    patch: dict[str, Any],
    *,
    who: str,
    kind: str = UPDATE,
    undoes: int | None = None,
) -> Correction:
    """Apply a validated patch (:func:`app.dicom.patch.validate`) in the caller's
    transaction."""
    study = await lock_study(conn, study_uid)
    if study is None:
        raise NotFound(f"no study {study_uid} is stored here")
    current = await _current(conn, study)
    old = {tag: current.get(tag, {"vr": entry["vr"]}) for tag, entry in patch.items()}
    encoded = msgspec.json.encode(patch)
    sets, values = [], []
    for tag, column in COLUMNS.items():
        key = f"{tag:08X}"
        if key in patch:
            values.append(first_text(patch[key]))
            sets.append(f"{column} = ${len(values) + 2}")
    await conn.execute(
        f"""UPDATE study SET attrs = attrs || $2::jsonb,
                patch = coalesce(patch, '{{}}'::jsonb) || $2::jsonb,
                updated_at = now(){"".join(", " + s for s in sets)}
            WHERE pk = $1""",
        study["pk"],
        encoded,
        *values,
    )
    if f"{PATIENT_NAME:08X}" in patch:
        await set_name_words(conn, study["pk"], first_text(patch[f"{PATIENT_NAME:08X}"]))
    sop_uids = [
        r[0]
        for r in await conn.fetch(
            "SELECT sop_instance_uid FROM instance WHERE study_pk = $1", study["pk"]
        )
    ]
    # the instances' cached rows carry the study's patch: every process drops them
    await notify_study_changed(conn, study_uid)
    await log_study_update(conn, study["pk"])  # the change feed (issue #17)
    old_encoded = msgspec.json.encode(old)
    history = await conn.fetchval(
        """INSERT INTO study_update (study_uid, who, kind, old, new, undoes)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        study_uid,
        who,
        kind,
        old_encoded,
        encoded,
        undoes,
    )
    if undoes is not None:
        await conn.execute("UPDATE study_update SET undone = true WHERE id = $1", undoes)
    await audit(
        conn,
        who,
        kind,
        studies=[study_uid],
        instances=sop_uids,
        detail={"old": old, "new": patch, "instances": len(sop_uids), "correction": history},
    )
    return Correction(study_uid, history, old, patch, len(sop_uids))


async def update(
    pool: asyncpg.Pool, study_uid: str, patch: dict[str, Any], *, who: str
) -> Correction:
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await update_in(conn, study_uid, patch, who=who)
    except INDEX_ERRORS as exc:
        raise index_failure("the correction failed", exc) from exc


async def undo(pool: asyncpg.Pool, study_uid: str, *, who: str) -> Correction:
    """Apply the old values of the study's latest correction not yet undone."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await lock_study(conn, study_uid)
            last = await conn.fetchrow(
                """SELECT id, old FROM study_update
                   WHERE study_uid = $1 AND NOT undone AND kind <> $2
                   ORDER BY id DESC LIMIT 1""",
                study_uid,
                UNDO,
            )
            if last is None:
                raise NotFound(f"study {study_uid} has no correction to undo")
            old: dict[str, Any] = msgspec.json.decode(bytes(last["old"]))
            return await update_in(conn, study_uid, old, who=who, kind=UNDO, undoes=last["id"])
    except INDEX_ERRORS as exc:
        raise index_failure("the undo failed", exc) from exc


async def history(pool: asyncpg.Pool, study_uid: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, at, who, kind, old, new, undoes, undone FROM study_update"
        " WHERE study_uid = $1 ORDER BY id",
        study_uid,
    )
    return [
        {
            "id": r["id"],
            "at": r["at"].isoformat(),
            "who": r["who"],
            "kind": r["kind"],
            "old": msgspec.json.decode(bytes(r["old"])),
            "new": msgspec.json.decode(bytes(r["new"])),
            "undoes": r["undoes"],
            "undone": r["undone"],
        }
        for r in rows
    ]


#: the Patient module attributes a merge carries from the target patient's record
PATIENT_ATTRIBUTES = ("00100010", "00100020", "00100021", "00100030", "00100040")


async def merge(
    pool: asyncpg.Pool,
    source: tuple[str, str | None],
    target: tuple[str, str | None],
    given: dict[str, Any],
    *,
    who: str,
) -> list[Correction]:
    """Move every study of the source patient (PatientID, IssuerOfPatientID) under the
    target patient, in one transaction (:func:`merge_in`)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await merge_in(conn, source, target, given, who=who)
    except INDEX_ERRORS as exc:
        raise index_failure("the merge failed", exc) from exc


async def merge_in(
    conn: asyncpg.Connection,
    source: tuple[str, str | None],
    target: tuple[str, str | None],
    given: dict[str, Any],
    *,
    who: str,
) -> list[Correction]:
    """The merge in the caller's transaction: the target's Patient module attributes
    (from its latest study, overridden by ``given``) are applied to each study of the
    source (HL7 ADT A40)."""
    if source == target:
        raise BadRequest("the source and the target are the same patient")
    studies = await _studies_of(conn, source)
    if not studies:
        raise NotFound(f"no study of patient {_who(source)} is stored here")
    patch: dict[str, Any] = {}
    latest = await conn.fetchval(
        """SELECT attrs FROM study WHERE patient_id = $1
               AND issuer_of_patient_id IS NOT DISTINCT FROM $2
           ORDER BY study_date DESC NULLS LAST, pk DESC LIMIT 1""",
        *target,
    )
    if latest is not None:
        attrs = msgspec.json.decode(bytes(latest))
        patch.update({k: attrs[k] for k in PATIENT_ATTRIBUTES if k in attrs})
    patch.update(given)
    patch["00100020"] = {"vr": "LO", "Value": [target[0]]}
    patch["00100021"] = (
        {"vr": "LO", "Value": [target[1]]} if target[1] is not None else {"vr": "LO"}
    )
    return [await update_in(conn, uid, patch, who=who, kind=MERGE) for uid in studies]


async def _studies_of(conn: asyncpg.Connection, patient: tuple[str, str | None]) -> Sequence[str]:
    rows = await conn.fetch(
        """SELECT study_uid FROM study WHERE patient_id = $1
               AND issuer_of_patient_id IS NOT DISTINCT FROM $2 ORDER BY study_uid""",
        *patient,
    )
    return [r[0] for r in rows]


def _who(patient: tuple[str, str | None]) -> str:
    return patient[0] + (f" (issuer {patient[1]})" if patient[1] is not None else "")
