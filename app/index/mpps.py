"""The index side of Modality Performed Procedure Steps (issue #18; ``schemas/017``;
PS3.4 F.7): the steps, the worklist items they perform and the series they made.

Each N-CREATE and N-SET is one transaction: the step, its links and the status of its
worklist items change together, with the audit event, or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from app.errors import Conflict, NotFound
from app.index.database import INDEX_ERRORS, index_failure
from app.index.lifecycle import audit
from app.index.worklist import set_status

#: the Scheduled Procedure Step Status (PS3.3 C.4.10) a worklist item takes when the
#: step performing it is in this Performed Procedure Step Status (PS3.3 C.4.14)
ITEM_STATUS = {"IN PROGRESS": "STARTED", "COMPLETED": "COMPLETED", "DISCONTINUED": "DISCONTINUED"}
#: items a performed step never changes: the RIS cancelled the order
_KEEP = ("CANCELED",)


@dataclass(frozen=True)
class Step:
    """One item of a Scheduled Step Attributes Sequence: which scheduled step."""

    study_uid: str
    accession_number: str
    requested_procedure_id: str
    sps_id: str


async def _items_of(conn: asyncpg.Connection, steps: Sequence[Step]) -> list[int]:
    """The worklist items the steps name: by the accession number, requested
    procedure and step IDs that are given, or, when none is (a step the modality
    did not take from the worklist), by the Study Instance UID."""
    pks: list[int] = []
    for step in steps:
        ids = (step.accession_number, step.requested_procedure_id, step.sps_id)
        rows = await conn.fetch(
            """SELECT pk FROM mwl_item
               WHERE CASE WHEN $2 = '' AND $3 = '' AND $4 = '' THEN study_uid = $1
                          ELSE ($2 = '' OR accession_number = $2)
                               AND ($3 = '' OR requested_procedure_id = $3)
                               AND ($4 = '' OR sps_id = $4) END
               ORDER BY pk FOR UPDATE""",
            step.study_uid,
            *ids,
        )
        pks.extend(r[0] for r in rows)
    return list(dict.fromkeys(pks))


async def _link_series(conn: asyncpg.Connection, uid: str, series: Sequence[str]) -> None:
    await conn.execute("DELETE FROM mpps_series WHERE mpps_uid = $1", uid)
    await conn.execute(
        """INSERT INTO mpps_series (series_uid, mpps_uid)
           SELECT s, $1 FROM unnest($2::text[]) AS s ON CONFLICT DO NOTHING""",
        uid,
        list(series),
    )


async def create(
    pool: asyncpg.Pool,
    uid: str,
    attrs: dict[str, Any],
    steps: Sequence[Step],
    series: Sequence[str],
    station_aet: str,
    *,
    who: str,
) -> int:
    """A new step IN PROGRESS (its status is checked by the caller); the number of
    worklist items it performs. A step with this UID already: :class:`Conflict`."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                """INSERT INTO mpps (sop_instance_uid, status, study_uid, station_aet, attrs)
                   VALUES ($1, 'IN PROGRESS', $2, $3, $4)
                   ON CONFLICT DO NOTHING RETURNING true""",
                uid,
                steps[0].study_uid,
                station_aet,
                msgspec.json.encode(attrs),
            )
            if not created:
                raise Conflict(f"a Performed Procedure Step {uid} exists already")
            pks = await _items_of(conn, steps)
            await conn.execute(
                """INSERT INTO mpps_step (mpps_uid, item_pk)
                   SELECT $1, pk FROM unnest($2::bigint[]) AS pk""",
                uid,
                pks,
            )
            await _link_series(conn, uid, series)
            await set_status(conn, pks, ITEM_STATUS["IN PROGRESS"], keep=_KEEP)
            await audit(
                conn,
                who,
                "mpps-create",
                studies=[s.study_uid for s in steps],
                series=series,
                detail={"mpps": uid, "status": "IN PROGRESS", "items": len(pks)},
            )
            return len(pks)
    except INDEX_ERRORS as exc:
        raise index_failure("the performed procedure step could not be recorded", exc) from exc


async def update(
    pool: asyncpg.Pool,
    uid: str,
    apply: Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]],
    status_of: Callable[[Mapping[str, Any]], str],
    *,
    who: str,
) -> tuple[dict[str, Any], int]:
    """The stored step changed by ``apply`` (stored attributes -> new attributes and
    their performed series; it raises to refuse), under a row lock so that two N-SETs
    of one step are applied one after the other. Unknown: :class:`NotFound`."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT attrs, status FROM mpps WHERE sop_instance_uid = $1 FOR UPDATE", uid
            )
            if row is None:
                raise NotFound(f"no Performed Procedure Step {uid}")
            attrs, series = apply(msgspec.json.decode(bytes(row["attrs"])))
            status = status_of(attrs)
            await conn.execute(
                """UPDATE mpps SET attrs = $2, status = $3, updated_at = now()
                   WHERE sop_instance_uid = $1""",
                uid,
                msgspec.json.encode(attrs),
                status,
            )
            await _link_series(conn, uid, series)
            pks = [
                r[0]
                for r in await conn.fetch(
                    "SELECT item_pk FROM mpps_step WHERE mpps_uid = $1 ORDER BY item_pk", uid
                )
            ]
            if status != row["status"]:
                await set_status(conn, pks, ITEM_STATUS[status], keep=_KEEP)
            studies = await conn.fetch(
                "SELECT DISTINCT study_uid FROM mwl_item WHERE pk = ANY($1::bigint[])", pks
            )
            await audit(
                conn,
                who,
                "mpps-set",
                studies=[r[0] for r in studies],
                series=series,
                detail={"mpps": uid, "status": status, "items": len(pks)},
            )
            return attrs, len(pks)
    except INDEX_ERRORS as exc:
        raise index_failure("the performed procedure step could not be updated", exc) from exc


async def get(pool: asyncpg.Pool, uid: str) -> dict[str, Any]:
    try:
        async with pool.acquire() as conn:
            attrs = await conn.fetchval("SELECT attrs FROM mpps WHERE sop_instance_uid = $1", uid)
    except INDEX_ERRORS as exc:
        raise index_failure("the performed procedure step could not be read", exc) from exc
    if attrs is None:
        raise NotFound(f"no Performed Procedure Step {uid}")
    decoded: dict[str, Any] = msgspec.json.decode(bytes(attrs))
    return decoded


async def order_of_series(pool: asyncpg.Pool, series_uid: str) -> list[dict[str, Any]]:
    """The worklist items (DICOM JSON) whose performed steps made this series."""
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT i.pk, i.attrs FROM mpps_series s
                   JOIN mpps_step p ON p.mpps_uid = s.mpps_uid
                   JOIN mwl_item i ON i.pk = p.item_pk
                   WHERE s.series_uid = $1 ORDER BY i.pk""",
                series_uid,
            )
    except INDEX_ERRORS as exc:
        raise index_failure("the order of the series could not be read", exc) from exc
    return [msgspec.json.decode(bytes(r["attrs"])) for r in rows]
